"""ONNX Runtime sessions called like a torch encoder, so one timing loop (atb.latency.measure) serves both."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from atb.deploy.onnx_export import export_module, quantize_int8
from atb.deploy.runtime import ORT_INT8, open_session


class OrtForward:
    """An ORT session called like a torch module; the inputs are converted to numpy once, outside the clock."""

    def __init__(self, session: Any, inputs: dict[str, torch.Tensor]):
        self.session = session
        self.feeds = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}

    def __call__(self, **_: torch.Tensor) -> list[Any]:
        return self.session.run(None, self.feeds)


def onnx_forward(model: torch.nn.Module, head: str, inputs: dict[str, torch.Tensor], runtime: str,
                 threads: int) -> OrtForward:
    """Export `model` to a temporary ONNX file (quantized for onnxruntime-int8) and open it on ORT."""
    config = model.config
    with tempfile.TemporaryDirectory(prefix="atb-onnx-") as tmp:
        path = export_module(model, head, Path(tmp) / "model.onnx", max_positions=config.max_position_embeddings,
                             vocab=config.vocab_size)
        if runtime == ORT_INT8:
            quantize_int8(path, Path(tmp) / "model.int8.onnx")
            path = Path(tmp) / "model.int8.onnx"
        session, _ = open_session(path, threads)  # the session holds the graph; the file can go
    return OrtForward(session, inputs)

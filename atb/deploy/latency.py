"""Latency on the runtime a model is served with: the same timing loop as the latency tables
(atb.latency.measure: warm-up, thread CPU clock, contention probe), with ONNX Runtime doing the forward.

`measure_folder_latency` times an exported folder's own model (its checked, non-stale ONNX file for the
ORT runtimes); `onnx_forward` turns an in-memory model into an ORT forward, which is how a latency table
of a space is measured on ORT without writing folders.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch

from atb.deploy.onnx_export import export_module, load_served_model, onnx_file, quantize_int8
from atb.deploy.runtime import ORT_INT8, TORCH, check_runtime, open_session
from atb.latency.measure import Measurement, MeasureSettings, random_inputs, time_forward


class OrtForward:
    """An ORT session called like a torch module; the inputs are converted to numpy once, outside the clock."""

    def __init__(self, session: Any, inputs: dict[str, torch.Tensor]):
        self.session = session
        self.feeds = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}

    def __call__(self, **_: torch.Tensor) -> list[Any]:
        return self.session.run(None, self.feeds)


def onnx_forward(model: torch.nn.Module, head: str, inputs: dict[str, torch.Tensor],
                 settings: MeasureSettings) -> OrtForward:
    """Export `model` to a temporary ONNX file (quantized for onnxruntime-int8) and open it on ORT."""
    config = model.config
    with tempfile.TemporaryDirectory(prefix="atb-onnx-") as tmp:
        path = export_module(model, head, Path(tmp) / "model.onnx", max_positions=config.max_position_embeddings,
                             vocab=config.vocab_size)
        if settings.runtime == ORT_INT8:
            quantize_int8(path, Path(tmp) / "model.int8.onnx")
            path = Path(tmp) / "model.int8.onnx"
        session, _ = open_session(path, settings.threads)  # the session holds the graph; the file can go
    return OrtForward(session, inputs)


def measure_folder_latency(folder: str | Path, runtime: str = ORT_INT8, settings: MeasureSettings | None = None,
                           seed: int = 0) -> Measurement:
    """Median latency (ms) of the model an exported folder serves, on `runtime` under `settings`.

    For the ORT runtimes the folder must hold a fresh ONNX export (tools/export_onnx.py; int8 for
    onnxruntime-int8); torch times the folder's model in eager mode."""
    settings = dataclasses.replace(settings or MeasureSettings(), runtime=check_runtime(runtime))
    model, _ = load_served_model(folder)
    if settings.seq > model.config.max_position_embeddings:
        raise ValueError(f"seq {settings.seq} exceeds the {model.config.max_position_embeddings} positions of {folder}")
    inputs = random_inputs(model.config.vocab_size, settings, seed)
    if runtime == TORCH:
        forward: Any = model.to(device=torch.device(settings.device), dtype=getattr(torch, settings.dtype))
    else:
        forward = OrtForward(open_session(onnx_file(folder, runtime), settings.threads)[0], inputs)
    return time_forward(forward, inputs, settings)

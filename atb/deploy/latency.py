"""Latency on the runtime a model is served with: the same timing loop as the latency tables
(atb.latency.measure: warm-up, thread CPU clock, contention probe), with ONNX Runtime doing the forward.

`measure_folder_latency` times an exported folder's own model (its checked, non-stale ONNX file for the
ORT runtimes); a latency table of a space is measured on ORT without writing folders through
`ort_forward.onnx_forward`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from atb.deploy.onnx_export import load_served_model, onnx_file
from atb.deploy.ort_forward import OrtForward
from atb.deploy.runtime import ORT_INT8, TORCH, check_runtime, open_session
from atb.latency.measure import Measurement, MeasureSettings, random_inputs, time_forward


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

"""A folder's ONNX model run over tokenised features, returning its outputs as `Trainer.predict` does, so that
fine-tuning scores a model as deployed with the same code that scores it as trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np

from atb.deploy.onnx_export import INPUTS
from atb.deploy.runtime import open_session

Predict = Callable[[datasets.Dataset], tuple[np.ndarray, ...]]  # features -> one array per model output


def ort_predictor(path: str | Path, tokenizer: Any, batch_size: int, threads: int) -> Predict:
    """Outputs of the ONNX file at `path` (an exported folder's comes from `onnx_file`, checked against its
    weights), one array per output with rows padded to the longest feature as Trainer pads them (with -100)."""
    session, _ = open_session(path, threads)
    outputs = [o.name for o in session.get_outputs()]

    def predict(features: datasets.Dataset) -> tuple[np.ndarray, ...]:
        columns = [c for c in INPUTS if c in features.column_names]
        chunks: list[list[np.ndarray]] = []
        for start in range(0, len(features), batch_size):
            rows = features[start:start + batch_size]
            batch = tokenizer.pad({c: rows[c] for c in columns}, return_tensors="np")
            ids = batch["input_ids"].astype(np.int64)
            # a tokenizer without token types (RoBERTa's) means type 0 everywhere, as the PyTorch model assumes
            feed = {name: batch[name].astype(np.int64) if name in batch else np.zeros_like(ids) for name in INPUTS}
            chunks.append(session.run(outputs, feed))
        return tuple(_stack([chunk[k] for chunk in chunks]) for k in range(len(outputs)))

    return predict


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate batches whose per-token outputs have different lengths, padding them with -100."""
    if parts[0].ndim == 1 or all(p.shape[1:] == parts[0].shape[1:] for p in parts):
        return np.concatenate(parts)
    width = max(p.shape[1] for p in parts)
    padded = [np.pad(p, [(0, 0), (0, width - p.shape[1])] + [(0, 0)] * (p.ndim - 2), constant_values=-100)
              for p in parts]
    return np.concatenate(padded)

"""The search's dev data: held-out corpus blocks, masked deterministically, or a fixed file of them.

The same blocks and masks reach every rank and every run, so a score never depends on who computed it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from atb.data import build_blocks, dev_batches, load_corpus

Batch = dict[str, torch.Tensor]


def load_dev_batches(corpus: list[str], tokenizer: Any, seq_len: int, dev_fraction: float, data_seed: int,
                     batch_size: int, max_batches: int, cache_dir: str | None) -> list[Batch]:
    """The corpus's held-out dev blocks, masked deterministically (same blocks and masks on every rank and
    in every run), capped at `max_batches` (0 = all)."""
    blocks = build_blocks(load_corpus(corpus), tokenizer, seq_len, dev_fraction=dev_fraction, seed=data_seed,
                          num_proc=1, cache_dir=cache_dir)
    batches = list(dev_batches(blocks["dev"], tokenizer, batch_size, data_seed))
    return batches[:max_batches] if max_batches > 0 else batches


BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def save_dev_batches(batches: list[Batch], path: str | Path) -> Path:
    """A fixed, already-masked dev set in one safetensors file: scores stay comparable across searches
    even if the data pipeline (tokenizer, masking) changes later."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{i:06d}.{k}": b[k].contiguous() for i, b in enumerate(batches) for k in BATCH_KEYS}, str(path))
    return path


def read_dev_batches(path: str | Path, max_batches: int = 0) -> list[Batch]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dev data file not found: {path}")
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"dev data file {path} is not a readable safetensors file: {err}") from None
    batches: dict[str, Batch] = {}
    for key, tensor in flat.items():
        index, _, name = key.partition(".")
        batches.setdefault(index, {})[name] = tensor
    out = [batches[i] for i in sorted(batches)]
    for i, b in enumerate(out):
        if set(b) != set(BATCH_KEYS):
            raise ValueError(f"dev data file {path}: batch {i} has {sorted(b)}, expected {list(BATCH_KEYS)}")
    return out[:max_batches] if max_batches > 0 else out

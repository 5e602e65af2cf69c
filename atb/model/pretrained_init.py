"""Initialise a SuperBert from an existing BERT-family checkpoint, wherever the shapes overlap.

A SuperPLM trained from a good BERT converges far faster than from scratch. Each supernet tensor takes the
overlapping leading block of the checkpoint's tensor of the same name; attention weights overlap head by
head (first min(heads) heads, first min(head dims) dims of each), matching the supernet's per-head slicing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from atb.model.bert_source import load_state, read_config
from atb.model.elastic import SuperBert
from atb.model.supernet_io import TIED_ALIASES

log = logging.getLogger(__name__)
HEAD_ROWS = (".attention.self.query.", ".attention.self.key.", ".attention.self.value.")
HEAD_COLS = ".attention.output.dense.weight"


def _overlap_heads(dst: torch.Tensor, src: torch.Tensor, dim: int, dst_heads: int, src_heads: int) -> None:
    d_view = dst.unflatten(dim, (dst_heads, -1))
    s_view = src.unflatten(dim, (src_heads, -1))
    idx = [slice(None)] * d_view.dim()
    for axis in range(d_view.dim()):
        idx[axis] = slice(0, min(d_view.shape[axis], s_view.shape[axis]))
    d_view[tuple(idx)] = s_view[tuple(idx)].to(dst.dtype)


def _overlap(dst: torch.Tensor, src: torch.Tensor) -> None:
    idx = tuple(slice(0, min(a, b)) for a, b in zip(dst.shape, src.shape))
    dst[idx] = src[idx].to(dst.dtype)


@torch.no_grad()
def init_from_pretrained(model: SuperBert, folder: str | Path) -> dict[str, list[str]]:
    config = read_config(folder)  # refuses a folder that is not BERT-family before the weights are read
    state = load_state(folder)  # BertForMaskedLM names
    src_heads = int(config.get("num_attention_heads", model.space.heads.max))
    dst_heads = model.space.heads.max
    copied, skipped = [], []
    for name, param in model.named_parameters():
        if name in TIED_ALIASES:
            continue
        src = state.get(name)
        if src is None or src.dim() != param.dim():
            skipped.append(name)
            continue
        if any(tag in name for tag in HEAD_ROWS):
            _overlap_heads(param, src, 0, dst_heads, src_heads)
        elif name.endswith(HEAD_COLS):
            _overlap_heads(param, src, 1, dst_heads, src_heads)
        else:
            _overlap(param, src)
        copied.append(name)
    if not copied:
        raise ValueError(f"--init_from {folder}: no tensor names match a BERT checkpoint; nothing was initialised")
    log.info("initialised %d tensors from %s (%d without a match)", len(copied), folder, len(skipped))
    return {"copied": copied, "skipped": skipped}

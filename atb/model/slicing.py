"""How a sub-architecture selects its part of a supernet tensor.

One rule serves the training forward pass and extraction, so an extracted model is, by construction, the
sub-network that was trained. A dimension is selected either by a leading count (`int`: hidden, ffn,
vocab rows) or per attention head (`HeadSlice`: the first `heads` heads, and the first `head_dim` dims of
each). A per-head selection whose heads are full-size is a leading block, so it stays a zero-copy view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch


@dataclass(frozen=True)
class HeadSlice:
    heads: int
    head_dim: int
    max_head_dim: int

    @property
    def size(self) -> int:
        return self.heads * self.head_dim


Selection = Union[int, HeadSlice]


def select(tensor: torch.Tensor, dim: int, sel: Selection) -> torch.Tensor:
    """The sub-tensor along `dim`: a view when the selection is a leading block, a copy otherwise."""
    if isinstance(sel, int):
        return tensor if sel == tensor.shape[dim] else tensor.narrow(dim, 0, sel)
    if sel.head_dim == sel.max_head_dim:
        return select(tensor, dim, sel.heads * sel.max_head_dim)
    per_head = tensor.unflatten(dim, (-1, sel.max_head_dim))
    return per_head.narrow(dim, 0, sel.heads).narrow(dim + 1, 0, sel.head_dim).flatten(dim, dim + 1)


def select_2d(weight: torch.Tensor, out_sel: Selection, in_sel: Selection) -> torch.Tensor:
    return select(select(weight, 0, out_sel), 1, in_sel)

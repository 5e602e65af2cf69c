"""How a sub-architecture selects its part of a supernet tensor, and the layers that slice their weights.

One rule serves the training forward pass and extraction, so an extracted model is, by construction, the
sub-network that was trained. A dimension is selected either by a leading count (`int`: hidden, ffn,
vocab rows) or per attention head (`HeadSlice`: the first `heads` heads, and the first `head_dim` dims of
each). A per-head selection whose heads are full-size is a leading block, so it stays a zero-copy view.

Gradients take the ordinary autograd path (as in HAT's `linear_super.py`): the backward of a slice writes
the sub-network's gradient into a full-size, otherwise zero, gradient of the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn


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


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with its names under `prefix`, as `nn.Module.state_dict` names a child's tensors."""
    return {f"{prefix}.{name}": tensor for name, tensor in state.items()}


class ElasticLinear(nn.Module):
    """A linear layer every sub-arch slices. The weight starts uninitialised: its owner initialises it
    (SuperBert.reset_parameters, the KD projection), once, with the RNG stream the model's seed defines."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def sub_state_dict(self, out_sel: Selection, in_sel: Selection) -> dict[str, torch.Tensor]:
        state = {"weight": select_2d(self.weight, out_sel, in_sel)}
        if self.bias is not None:
            state["bias"] = select(self.bias, 0, out_sel)
        return state

    def forward(self, x: torch.Tensor, out_sel: Selection, in_sel: Selection) -> torch.Tensor:
        bias = None if self.bias is None else select(self.bias, 0, out_sel)
        return F.linear(x, select_2d(self.weight, out_sel, in_sel), bias)


class ElasticLayerNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def sub_state_dict(self, size: int) -> dict[str, torch.Tensor]:
        return {"weight": select(self.weight, 0, size), "bias": select(self.bias, 0, size)}

    def forward(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return F.layer_norm(x, (size,), select(self.weight, 0, size), select(self.bias, 0, size), self.eps)


class ElasticEmbedding(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim))

    def sub_state_dict(self, dim: int) -> dict[str, torch.Tensor]:
        return {"weight": select(self.weight, 1, dim)}

    def forward(self, ids: torch.Tensor, dim: int) -> torch.Tensor:
        return F.embedding(ids, select(self.weight, 1, dim))

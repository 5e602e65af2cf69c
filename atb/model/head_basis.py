"""A basis inside each attention head in which its leading dims carry the most of what the head computes.

A sub-network keeps the first d query/key and value dims of every head. In the source's own basis each dim
carries a similar share, so d of D dims keep about d/D of the attention scores and of what the head writes.
Both are products of two matrices, so an invertible change of basis leaves the model's function exactly as
it was: scores q·k are unchanged by q -> q A, k -> k A^-T, and a head's output ctx W_o^T by v -> v B,
W_o -> W_o B^-T. Choosing A and B from second moments on calibration tokens (whiten one side, diagonalise
the other) puts the largest shares of q·k and of the written output in the leading dims, in decreasing
order; the scale is split evenly between the two sides.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from atb.model.bert_source import Reduce, SourceDims, encoder_model, run_calibration

EIGEN_FLOOR = 1e-6  # eigenvalues below this share of the largest are clamped: whitening must stay invertible


@dataclass
class HeadBases:
    qk: torch.Tensor  # [layers, heads, head_dim, head_dim]: A per (old) head; q -> q A, k -> k A^-T
    v: torch.Tensor  # [layers, heads, head_dim, head_dim]: B per (old) head; v -> v B, W_o -> W_o B^-T


def _sqrt_and_inverse(moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(moment)
    values = values.clamp_min(EIGEN_FLOOR * values.max().clamp_min(1e-30))
    return (vectors * values.sqrt()) @ vectors.T, (vectors * values.rsqrt()) @ vectors.T


def paired_basis(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """A with x A and y A^-T keeping the most of E[(x·y)^2]-like energy in their leading dims, for x and y of
    second moments `left` and `right`; the i-th pair of dims carries the i-th largest share."""
    root, inverse_root = _sqrt_and_inverse(left)
    shares, vectors = torch.linalg.eigh(root @ right @ root)
    shares, vectors = shares.flip(0).clamp_min(0), vectors.flip(1)
    # an eigenvector's sign is arbitrary: fix it, so moments summed in another order (other ranks) give the
    # same basis, not one with some dims negated
    largest = vectors.gather(0, vectors.abs().argmax(0, keepdim=True))
    vectors = vectors * torch.where(largest < 0, -1.0, 1.0).to(vectors.dtype)
    balance = (shares.clamp_min(EIGEN_FLOOR * shares.max().clamp_min(1e-30))) ** 0.25
    return inverse_root @ vectors * balance


@torch.no_grad()
def compute_head_bases(model: nn.Module, batches: list[dict[str, torch.Tensor]], dims: SourceDims,
                       reduce: Reduce = lambda t: t) -> HeadBases:
    """Bases for every head of `model` (a transformers BERT-family model) from its q, k and attention output
    (context) over the real tokens of this rank's `batches`; `reduce` sums a tensor over ranks."""
    L, A, D = dims.layers, dims.heads, dims.head_dim
    device = next(model.parameters()).device
    moments = {name: torch.zeros(L, A, D, D, dtype=torch.float64, device=device) for name in ("q", "k", "ctx")}
    real: dict[str, torch.Tensor] = {}

    def add(name: str, i: int, x: torch.Tensor) -> None:
        x = x.detach().double()[real["mask"]].view(-1, A, D)  # [tokens, heads, head_dim]
        moments[name][i] += torch.einsum("tad,tae->ade", x, x)

    hooks = []
    for i, layer in enumerate(encoder_model(model).encoder.layer):
        attn = layer.attention
        hooks += [attn.self.query.register_forward_hook(lambda m, a, o, i=i: add("q", i, o)),
                  attn.self.key.register_forward_hook(lambda m, a, o, i=i: add("k", i, o)),
                  attn.output.dense.register_forward_pre_hook(lambda m, a, i=i: add("ctx", i, a[0]))]
    tokens = run_calibration(model, batches, hooks, real)
    # means, not sums: the split of scale between the two sides of a pair depends on the moments' size
    count = reduce(tokens).clamp_min(1)
    moments = {k: reduce(v) / count for k, v in moments.items()}
    qk = torch.zeros(L, A, D, D, dtype=torch.float64)
    v = torch.zeros_like(qk)
    for i, layer in enumerate(encoder_model(model).encoder.layer):
        out = layer.attention.output.dense.weight.detach().double().cpu().view(-1, A, D)  # [hidden, heads, head_dim]
        for a in range(A):
            qk[i, a] = paired_basis(moments["q"][i, a].cpu(), moments["k"][i, a].cpu())
            v[i, a] = paired_basis(moments["ctx"][i, a].cpu(), out[:, a].T @ out[:, a])
    return HeadBases(qk, v)

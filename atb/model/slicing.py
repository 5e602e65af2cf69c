"""How a sub-architecture selects its part of a supernet tensor, and how gradients find their way back.

One rule serves the training forward pass and extraction, so an extracted model is, by construction, the
sub-network that was trained. A dimension is selected either by a leading count (`int`: hidden, ffn,
vocab rows) or per attention head (`HeadSlice`: the first `heads` heads, and the first `head_dim` dims of
each). A per-head selection whose heads are full-size is a leading block, so it stays a zero-copy view.

Backward is where slicing costs. Each sliced weight needs a full-size gradient (zero outside the slice),
and autograd's own backward of `F.linear` on a slice follows the slice's strides: it computes the weight
gradient transposed, a slower GEMM followed by strided copies. Linear layers therefore go through
`elastic_linear`, which computes the sub-network's gradients exactly as a dense `nn.Linear` does (same
GEMMs, same layout) and widens the weight's to the full size once (`widen`). The word embeddings, which
the MLM decoder also reads, go through `select_shared` / `tied_linear`: the two gradients add at the
sub-network's size and are widened once, instead of twice plus a full-size sum (for BERT's 30522 x 768
embeddings each widening is a fresh 94 MB tensor). Every gradient still reaches its parameter through
ordinary autograd, one AccumulateGrad call per parameter and backward, as DeepSpeed ZeRO expects.
A widened gradient is written once: the block by the GEMM or sum that computes it, the rest zeroed; its
memory comes from `gradient_memory.py` (on the CPU, a pool that spares each step the page faults).

On a GPU the trade-off turns: cuBLAS takes transposed operands at no cost and a widening is a fast
memset and copy, while a Python autograd Function costs host time that a small sub-network's step cannot hide
(kernels are launched faster than Python runs). There linear layers use autograd's own backward on the
sliced views (`NATIVE_BACKWARD_DEVICES`); the tied word embeddings keep their custom path everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
import torch.nn.functional as F

from atb.model.gradient_memory import empty_gradient


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


def widen(part: torch.Tensor, full_shape: torch.Size, sels: dict[int, Selection]) -> torch.Tensor:
    """The inverse of `select`: `part` placed where the selections took it from, zeros elsewhere."""
    if _is_whole(full_shape, sels):
        return part
    if _is_block(sels):
        full, block = _gradient_around_block(part, full_shape, sels)
        block.copy_(part)
        return full
    full = empty_gradient(part, full_shape).zero_()
    region, source = full, part
    for dim in sorted(sels, reverse=True):  # last dim first: unflattening it leaves earlier indices valid
        sel = sels[dim]
        count = _leading_count(sel)
        if count is not None:
            region = region.narrow(dim, 0, count)
        else:
            assert isinstance(sel, HeadSlice)
            region = region.unflatten(dim, (-1, sel.max_head_dim)).narrow(dim, 0, sel.heads)
            region = region.narrow(dim + 1, 0, sel.head_dim)
            source = source.unflatten(dim, (sel.heads, sel.head_dim))
    region.copy_(source)
    return full


def _widened_product(a: torch.Tensor, b: torch.Tensor, full_shape: torch.Size,
                     sels: dict[int, Selection]) -> torch.Tensor:
    """`widen(a @ b, full_shape, sels)`, the product written straight into its block where it can be.

    Saving that copy matters beyond its bytes: on a busy machine every multi-threaded op waits for its
    threads to be scheduled, so an extra op per weight shows up in a step's time.
    """
    if _is_whole(full_shape, sels):
        return a @ b
    if not _is_block(sels):
        return widen(a @ b, full_shape, sels)
    full, block = _gradient_around_block(a, full_shape, sels)
    torch.mm(a, b, out=block)
    return full


def _widened_sum(a: torch.Tensor, b: torch.Tensor | None, full_shape: torch.Size,
                 sels: dict[int, Selection]) -> torch.Tensor:
    """`widen(a + b, full_shape, sels)` (b may be absent), the sum written straight into its block."""
    if b is None:
        return widen(a, full_shape, sels)
    if _is_whole(full_shape, sels):
        return a + b
    if not _is_block(sels):
        return widen(a + b, full_shape, sels)
    full, block = _gradient_around_block(a, full_shape, sels)
    torch.add(a, b, out=block)
    return full


def _leading_count(sel: Selection) -> int | None:
    """How many leading entries `sel` takes, or None if it takes the first dims of each head (not a block)."""
    if isinstance(sel, int):
        return sel
    return sel.heads * sel.max_head_dim if sel.head_dim == sel.max_head_dim else None


def _is_block(sels: dict[int, Selection]) -> bool:
    return all(_leading_count(sel) is not None for sel in sels.values())


def _gradient_around_block(like: torch.Tensor, full_shape: torch.Size,
                           sels: dict[int, Selection]) -> tuple[torch.Tensor, torch.Tensor]:
    """A full-size gradient that is zero outside the block `sels` select, and the (unwritten) block view.

    Only the complement is zeroed: the caller writes the block anyway, and zeroing it first would be a
    second pass over memory that, for the word embeddings at hidden 256, is a third of 94 MB a step.
    Dimension by dimension, the part past the block's extent is zeroed and the rest narrowed to it.
    """
    full = empty_gradient(like, full_shape)
    block = full
    for dim, sel in sels.items():
        count = _leading_count(sel)
        assert count is not None
        if count < block.shape[dim]:
            block.narrow(dim, count, block.shape[dim] - count).zero_()
        block = block.narrow(dim, 0, count)
    return full, block


def _is_whole(full_shape: torch.Size, sels: dict[int, Selection]) -> bool:
    return all(_leading_count(sel) == full_shape[dim] for dim, sel in sels.items())


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


class _ElasticLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_sel: Selection,
                in_sel: Selection) -> torch.Tensor:
        part = select_2d(weight, out_sel, in_sel)
        ctx.save_for_backward(x, part)
        ctx.weight_shape, ctx.bias_shape = weight.shape, None if bias is None else bias.shape
        ctx.out_sel, ctx.in_sel = out_sel, in_sel
        return F.linear(x, part, None if bias is None else select(bias, 0, out_sel))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # The weight's gradient as grad^T @ x, [out, in] like the weight: autograd's own linear backward
        # follows the slice's strides instead and computes it transposed, which on CPU made the decoder's
        # weight GEMM about 2x slower and every later copy of the gradient a strided one.
        x, part = ctx.saved_tensors
        want_x, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_x = grad @ part if want_x else None
        grad_weight = grad_bias = None
        rows = _rows(grad)
        if want_weight:
            grad_weight = _widened_product(rows.t(), _rows(x), ctx.weight_shape, {0: ctx.out_sel, 1: ctx.in_sel})
        if want_bias:
            grad_bias = widen(rows.sum(0), ctx.bias_shape, {0: ctx.out_sel})
        return grad_x, grad_weight, grad_bias, None, None


# Where linear layers skip `_ElasticLinear`. Measured on an H100 (bench/RESULTS.md, bf16, batch 32 x 128):
# its Python backward was 1.55 ms of host time a step at L2_H256, about SuperBert's whole gap in that
# profile (9.6 vs 8.0 ms a step; 2.7 ms of GPU work on either side); skipping it took subnet_scaling's
# worst ratio there from 1.56 to 1.41.
NATIVE_BACKWARD_DEVICES: frozenset[str] = frozenset({"cuda"})


def elastic_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_sel: Selection,
                   in_sel: Selection) -> torch.Tensor:
    """`F.linear(x, select_2d(weight, out_sel, in_sel), select(bias, 0, out_sel))`, with a dense model's backward."""
    if x.device.type in NATIVE_BACKWARD_DEVICES:
        return F.linear(x, select_2d(weight, out_sel, in_sel), None if bias is None else select(bias, 0, out_sel))
    return _ElasticLinear.apply(x, weight, bias, out_sel, in_sel)


class _SharedSlice(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, dim: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)  # an unused handle must cost nothing, not a zero tensor
        ctx.full_shape, ctx.dim, ctx.count = weight.shape, dim, count
        part = weight.narrow(dim, 0, count)
        return part, weight.new_zeros(()).expand(part.shape)

    @staticmethod
    def backward(ctx, grad_part: torch.Tensor | None, grad_handle: torch.Tensor | None):
        grads = [g for g in (grad_part, grad_handle) if g is not None]
        if not grads:
            return None, None, None
        second = grads[1] if len(grads) == 2 else None
        return _widened_sum(grads[0], second, ctx.full_shape, {ctx.dim: ctx.count}), None, None


def select_shared(weight: torch.Tensor, dim: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`select(weight, dim, count)` for a weight that a second module reads too (tied word embeddings).

    Returns the slice and a handle (zero storage) that the other module passes to `tied_linear`; the
    gradients of both then add at the slice's size and are widened to the full weight once.
    """
    return _SharedSlice.apply(weight, dim, count)


class _TiedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, handle: torch.Tensor, part: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, part)
        return F.linear(x, part, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, part = ctx.saved_tensors  # as _ElasticLinear, but the weight's gradient stays the part's size
        want_x, want_handle, _, want_bias = ctx.needs_input_grad
        grad_x = grad @ part if want_x else None
        rows = _rows(grad)
        grad_part = rows.t() @ _rows(x) if want_handle else None
        grad_bias = rows.sum(0) if want_bias else None
        return grad_x, grad_part, None, grad_bias


def tied_linear(x: torch.Tensor, handle: torch.Tensor, weight: torch.Tensor, in_features: int,
                bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight[:, :in_features], bias)` where that slice was made by `select_shared`, whose
    `handle` receives the weight's gradient. The values are read from `weight` now, so under ZeRO-3 from
    the copy gathered for the calling module."""
    return _TiedLinear.apply(x, handle, weight.detach().narrow(1, 0, in_features), bias)

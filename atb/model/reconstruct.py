"""Layer-wise least-squares reconstruction of a sliced sub-network against its source.

Slicing drops FFN neurons, head dims and channels; what the dropped units wrote into the residual stream is
lost. The two projections that write into the stream (each layer's attention output and FFN output) are
linear, so given the sub-network's own inputs to them and the source's residual stream at the same point,
the best replacement weights are a least-squares solve: no gradient steps, a few calibration batches (the
normal equations are summed, so ranks can split the batches). A sub-network with fewer hidden channels also
normalises the stream over those channels only, so each LayerNorm after a projection (and the embeddings')
gets the per-channel weight and bias that best turn the sub-network's normalised stream into the source's
LayerNorm output. Layers are fitted first to last, each on the already fitted layers before it, so errors do
not pile up. Every fit pulls towards the sliced weights (ridge) and only replaces them when it reconstructs
held-out calibration tokens measurably better.

The source must keep its units in the sub-network's order (for a SuperPLM: the ordered source), since the
sub-network's `h` hidden channels are matched with the source's first `h`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atb.model.bert_source import Reduce, encoder_model, run_calibration

BLOCKS = ("attention", "ffn")
MIN_GAIN = 1e-3  # relative drop in held-out error a fit needs to replace the weights it was fitted from
# ... and absolute (as a share of the target's variance): below it the student already rebuilds the source up
# to the rounding of the summed equations, and a "gain" is that rounding
ERROR_FLOOR = 1e-6


@dataclass
class BlockFit:
    """One fit: `block` names a projection into the stream ("attention", "ffn") or the LayerNorm behind it
    ("attention_norm", "ffn_norm"; "embeddings_norm" at layer -1)."""

    layer: int
    block: str
    source_layer: int
    error_before: float  # held-out squared error as a share of the target's variance there
    error_after: float
    replaced: bool


def _output(layer: nn.Module, block: str) -> nn.Module:
    """The module holding the projection into the stream (`dense`) and the LayerNorm after the residual."""
    return layer.attention.output if block == "attention" else layer.output


class _Normal:
    """Running sums of the normal equations of [x, 1] @ beta = y over real tokens (fp64)."""

    def __init__(self, features: int, outputs: int, device: torch.device):
        self.xx = torch.zeros(features + 1, features + 1, dtype=torch.float64, device=device)
        self.xy = torch.zeros(features + 1, outputs, dtype=torch.float64, device=device)
        self.yy = torch.zeros(outputs, dtype=torch.float64, device=device)
        self.y = torch.zeros(outputs, dtype=torch.float64, device=device)
        self.n = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = torch.cat([x.double(), torch.ones_like(x[:, :1], dtype=torch.float64)], 1)
        y = y.double()
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += y.square().sum(0)
        self.y += y.sum(0)
        self.n += len(y)

    def reduce(self, fn: Reduce) -> None:
        for name in ("xx", "xy", "yy", "y", "n"):
            setattr(self, name, fn(getattr(self, name)))

    def error(self, beta: torch.Tensor) -> float:
        """sum ||[x, 1] @ beta - y||^2 over the tokens seen, as a share of y's variance."""
        sse = (beta * (self.xx @ beta)).sum() - 2 * (beta * self.xy).sum() + self.yy.sum()
        variance = (self.yy - self.y.square() / self.n.clamp_min(1)).sum()
        return float(sse / variance.clamp_min(1e-12))


class _AffineNormal:
    """Per-channel running sums of the least-squares fit y = weight * n + bias (fp64), where n is the
    sub-network's stream normalised by its own LayerNorm (before the affine) and y the source's LayerNorm
    output on the same channels."""

    def __init__(self, channels: int, device: torch.device):
        self.n, self.nn, self.ny, self.y, self.yy = (torch.zeros(channels, dtype=torch.float64, device=device)
                                                      for _ in range(5))
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, n: torch.Tensor, y: torch.Tensor) -> None:
        n, y = n.double(), y.double()
        self.n += n.sum(0)
        self.nn += n.square().sum(0)
        self.ny += (n * y).sum(0)
        self.y += y.sum(0)
        self.yy += y.square().sum(0)
        self.count += len(y)

    def reduce(self, fn: Reduce) -> None:
        for name in ("n", "nn", "ny", "y", "yy", "count"):
            setattr(self, name, fn(getattr(self, name)))

    def error(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        """sum ||weight * n + bias - y||^2 over the tokens seen, as a share of y's variance."""
        sse = (weight.square() * self.nn + 2 * weight * bias * self.n + bias.square() * self.count
               - 2 * weight * self.ny - 2 * bias * self.y + self.yy).sum()
        variance = (self.yy - self.y.square() / self.count.clamp_min(1)).sum()
        return float(sse / variance.clamp_min(1e-12))


def _improves(before: float, after: float) -> bool:
    """Whether a fit's held-out error is measurably lower: a tie decided by float rounding would make ranks
    that sum their equations in another order keep different weights."""
    return after < before * (1 - MIN_GAIN) and before - after > ERROR_FLOOR


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # older transformers return tuples from blocks


def _run_block(layer: nn.Module, block: str, x: torch.Tensor) -> torch.Tensor:
    if block == "attention":
        return _first(layer.attention(x, None))
    return _first(layer.output(layer.intermediate(x), x))


@dataclass
class Calibration:
    """Unpadded calibration blocks (this rank's share), which of them only judge a fit, and the source's
    pre-LayerNorm residual stream after its embeddings and after each layer's attention and FFN block on each
    of them, with the source's LayerNorms that turn those streams into its outputs. Built once and shared by
    every sub-network reconstructed against the same source."""

    batches: list[dict[str, torch.Tensor]]
    held_out: list[bool]
    embeddings: list[torch.Tensor]  # [batch] -> [batch, seq, hidden]
    streams: list[dict[str, list[torch.Tensor]]]  # [source layer][block][batch] -> [batch, seq, hidden]
    embedding_norm: nn.LayerNorm
    norms: list[dict[str, nn.LayerNorm]]  # [source layer][block]

    @classmethod
    @torch.no_grad()
    def from_source(cls, source: nn.Module, batches: list[dict[str, torch.Tensor]],
                    held_out: list[bool]) -> "Calibration":
        if len(held_out) != len(batches):
            raise ValueError(f"{len(batches)} calibration batches but {len(held_out)} held-out flags")
        if not all(bool(b["attention_mask"].all()) for b in batches):
            raise ValueError("reconstruction runs layers without a mask: calibration blocks must have no padding")
        base = encoder_model(source)
        layers = base.encoder.layer
        embeddings: list[torch.Tensor] = []
        streams: list[dict[str, list[torch.Tensor]]] = [{block: [] for block in BLOCKS} for _ in layers]
        hooks = [_output(layer, block).LayerNorm.register_forward_pre_hook(
            lambda m, a, seen=streams[i][block]: seen.append(a[0].detach()))
            for i, layer in enumerate(layers) for block in BLOCKS]
        hooks.append(base.embeddings.LayerNorm.register_forward_pre_hook(lambda m, a: embeddings.append(a[0].detach())))
        run_calibration(base, batches, hooks, real={})  # the hooks record every token: none is padding
        norms = [{block: copy.deepcopy(_output(layer, block).LayerNorm) for block in BLOCKS} for layer in layers]
        return cls(batches, list(held_out), embeddings, streams, copy.deepcopy(base.embeddings.LayerNorm), norms)


def _collect(layer: nn.Module, block: str, inputs: list[torch.Tensor], targets: list[torch.Tensor],
             held_out: list[bool]) -> tuple[_Normal, _Normal]:
    """Normal equations for one projection: its inputs are what the sub-network feeds `dense`; its targets
    are the source's pre-LayerNorm stream minus the sub-network's own residual at that point."""
    out = _output(layer, block)
    hidden, features = out.dense.out_features, out.dense.in_features
    device = out.dense.weight.device
    fit, held = _Normal(features, hidden, device), _Normal(features, hidden, device)
    seen: dict[str, torch.Tensor] = {}
    hooks = [out.dense.register_forward_hook(lambda m, a, o: seen.update(x=a[0], written=o)),
             out.LayerNorm.register_forward_pre_hook(lambda m, a: seen.update(stream=a[0]))]
    try:
        for x, target, judge_only in zip(inputs, targets, held_out):
            _run_block(layer, block, x)
            residual = seen["stream"] - seen["written"]
            y = (target[..., :hidden] - residual).flatten(0, 1)
            (held if judge_only else fit).add(seen["x"].flatten(0, 1), y)
    finally:
        for h in hooks:
            h.remove()
    return fit, held


def _source_layer(i: int, student_layers: int, source_layers: int, last_to_last: bool) -> int:
    return source_layers - 1 if last_to_last and i == student_layers - 1 else i


def _collect_norm(norm: nn.LayerNorm, run: Callable[[Any], Any], inputs: list, targets: list[torch.Tensor],
                  source_norm: nn.LayerNorm, held_out: list[bool]) -> tuple[_AffineNormal, _AffineNormal]:
    """Per-channel sums for one LayerNorm's affine: `run` feeds it the sub-network's own stream; the targets
    are the source's LayerNorm outputs on the sub-network's channels."""
    width = norm.normalized_shape[0]
    fit, held = (_AffineNormal(width, norm.weight.device) for _ in range(2))
    seen: dict[str, torch.Tensor] = {}
    hook = norm.register_forward_pre_hook(lambda m, a: seen.update(stream=a[0]))
    try:
        for x, target, judge_only in zip(inputs, targets, held_out):
            run(x)
            n = F.layer_norm(seen["stream"], (width,), eps=norm.eps).flatten(0, 1)
            (held if judge_only else fit).add(n, source_norm(target)[..., :width].flatten(0, 1))
    finally:
        hook.remove()
    return fit, held


@torch.no_grad()
def reconstruct(student: nn.Module, calibration: Calibration, ridge: float = 1e-2, last_to_last: bool = False,
                reduce: Reduce = lambda t: t) -> list[BlockFit]:
    """Refit, in place, every attention-output and FFN-output projection of `student` (a transformers
    BERT-family model sliced from the calibration's source), and the affine of every LayerNorm, since a
    LayerNorm over fewer hidden channels scales them differently from the source's; `reduce` sums a tensor
    over ranks. Student layer i is matched with source layer i (the first-L-layers rule), or its last layer
    with the source's last when `last_to_last`. `ridge` is relative to the mean input energy."""
    was_training = student.training
    student.eval()
    base = encoder_model(student)
    layers = base.encoder.layer
    fits = []

    def fit_norm(norm: nn.LayerNorm, run, inputs, targets, source_norm, layer: int, block: str, source_layer: int):
        fit, held = _collect_norm(norm, run, inputs, targets, source_norm, calibration.held_out)
        fit.reduce(reduce), held.reduce(reduce)
        fits.append(_refit_norm(norm, fit, held, ridge, layer, block, source_layer))

    def embed(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return base.embeddings(batch["input_ids"], batch["token_type_ids"])

    try:
        fit_norm(base.embeddings.LayerNorm, embed, calibration.batches, calibration.embeddings,
                 calibration.embedding_norm, -1, "embeddings_norm", -1)
        xs = [embed(b) for b in calibration.batches]
        for i, layer in enumerate(layers):
            source_layer = _source_layer(i, len(layers), len(calibration.streams), last_to_last)
            for block in BLOCKS:
                fit, held = _collect(layer, block, xs, calibration.streams[source_layer][block],
                                     calibration.held_out)
                fit.reduce(reduce), held.reduce(reduce)
                if not (fit.n > 0 and held.n > 0):
                    raise ValueError("reconstruction needs calibration tokens both to fit and to judge the fit")
                fits.append(_refit(_output(layer, block).dense, fit, held, ridge, i, block, source_layer))
                fit_norm(_output(layer, block).LayerNorm, lambda x: _run_block(layer, block, x), xs,
                         calibration.streams[source_layer][block], calibration.norms[source_layer][block],
                         i, f"{block}_norm", source_layer)
                xs = [_run_block(layer, block, x) for x in xs]
    finally:
        student.train(was_training)
    return fits


@torch.no_grad()
def _refit_norm(norm: nn.LayerNorm, fit: _AffineNormal, held: _AffineNormal, ridge: float, layer: int, block: str,
                source_layer: int) -> BlockFit:
    """Each channel's weight and bias by a ridge least-squares solve towards the current ones."""
    old_w, old_b = norm.weight.double(), norm.bias.double()
    lam = ridge * fit.nn.mean()
    a, b, d = fit.nn + lam, fit.n, fit.count + lam
    rw, rb = fit.ny + lam * old_w, fit.y + lam * old_b
    det = a * d - b * b
    new_w, new_b = (d * rw - b * rb) / det, (a * rb - b * rw) / det
    return _adopt(norm, new_w, new_b, held.error(old_w, old_b), held.error(new_w, new_b), layer, block, source_layer)


def _refit(dense: nn.Linear, fit: _Normal, held: _Normal, ridge: float, layer: int, block: str,
           source_layer: int) -> BlockFit:
    old = torch.cat([dense.weight.T, dense.bias[None]]).double()
    lam = ridge * fit.xx.diagonal().mean()
    eye = torch.eye(len(old), dtype=torch.float64, device=old.device)
    new = torch.linalg.solve(fit.xx + lam * eye, fit.xy + lam * old)
    return _adopt(dense, new[:-1].T, new[-1], held.error(old), held.error(new), layer, block, source_layer)


def _adopt(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor, before: float, after: float, layer: int,
           block: str, source_layer: int) -> BlockFit:
    """The fitted weight and bias replace `module`'s only when they rebuild the held-out tokens measurably
    better; the record says which."""
    replaced = _improves(before, after)
    if replaced:
        module.weight.copy_(weight.to(module.weight.dtype))
        module.bias.copy_(bias.to(module.bias.dtype))
    return BlockFit(layer, block, source_layer, before, after if replaced else before, replaced)

"""Layer-wise least-squares reconstruction of a sliced sub-network against its source.

Slicing drops FFN neurons, head dims and channels; what the dropped units wrote into the residual stream is
lost. The two projections that write into the stream (each layer's attention output and FFN output) are
linear, so given the sub-network's own inputs to them and the source's residual stream at the same point,
the best replacement weights are a least-squares solve: no gradient steps, a few calibration batches (the
normal equations are summed, so ranks can split the batches). Layers
are fitted first to last, each on the already fitted layers before it, so errors do not pile up. The fit
pulls towards the sliced weights (ridge), and a projection is only replaced when the new weights reconstruct
held-out calibration tokens better than the old ones did.

The source must keep its units in the sub-network's order (for a SuperPLM: the ordered source), since the
sub-network's `h` hidden channels are matched with the source's first `h`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from atb.model.bert_source import Reduce, encoder_model

BLOCKS = ("attention", "ffn")


@dataclass
class BlockFit:
    layer: int
    block: str  # "attention" (attention.output.dense) or "ffn" (output.dense)
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


def _first(out):
    return out[0] if isinstance(out, tuple) else out  # older transformers return tuples from blocks


def _run_block(layer: nn.Module, block: str, x: torch.Tensor) -> torch.Tensor:
    if block == "attention":
        return _first(layer.attention(x, None))
    return _first(layer.output(layer.intermediate(x), x))


@dataclass
class Calibration:
    """Unpadded calibration blocks (this rank's share), which of them only judge a fit, and the source's
    pre-LayerNorm residual stream after each layer's attention and FFN block on each of them. Built once and
    shared by every sub-network reconstructed against the same source."""

    batches: list[dict[str, torch.Tensor]]
    held_out: list[bool]
    streams: list[dict[str, list[torch.Tensor]]]  # [source layer][block][batch] -> [batch, seq, hidden]

    @classmethod
    @torch.no_grad()
    def from_source(cls, source: nn.Module, batches: list[dict[str, torch.Tensor]],
                    held_out: list[bool]) -> "Calibration":
        if len(held_out) != len(batches):
            raise ValueError(f"{len(batches)} calibration batches but {len(held_out)} held-out flags")
        if not all(bool(b["attention_mask"].all()) for b in batches):
            raise ValueError("reconstruction runs layers without a mask: calibration blocks must have no padding")
        source.eval()
        layers = encoder_model(source).encoder.layer
        streams: list[dict[str, list[torch.Tensor]]] = [{block: [] for block in BLOCKS} for _ in layers]
        hooks = [_output(layer, block).LayerNorm.register_forward_pre_hook(
            lambda m, a, seen=streams[i][block]: seen.append(a[0].detach()))
            for i, layer in enumerate(layers) for block in BLOCKS]
        try:
            for batch in batches:
                encoder_model(source)(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
        finally:
            for h in hooks:
                h.remove()
        return cls(batches, list(held_out), streams)


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


@torch.no_grad()
def reconstruct(student: nn.Module, calibration: Calibration, ridge: float = 1e-2, last_to_last: bool = False,
                reduce: Reduce = lambda t: t) -> list[BlockFit]:
    """Refit, in place, every attention-output and FFN-output projection of `student` (a transformers
    BERT-family model sliced from the calibration's source); `reduce` sums a tensor over ranks. Student layer
    i is matched with source layer i (the first-L-layers rule), or its last layer with the source's last when
    `last_to_last`. `ridge` is relative to the mean input energy."""
    was_training = student.training
    student.eval()
    base = encoder_model(student)
    layers = base.encoder.layer
    xs = [base.embeddings(b["input_ids"], b["token_type_ids"]) for b in calibration.batches]
    fits = []
    try:
        for i, layer in enumerate(layers):
            source_layer = _source_layer(i, len(layers), len(calibration.streams), last_to_last)
            for block in BLOCKS:
                fit, held = _collect(layer, block, xs, calibration.streams[source_layer][block],
                                     calibration.held_out)
                fit.reduce(reduce), held.reduce(reduce)
                if not (fit.n > 0 and held.n > 0):
                    raise ValueError("reconstruction needs calibration tokens both to fit and to judge the fit")
                fits.append(_refit(_output(layer, block).dense, fit, held, ridge, i, block, source_layer))
                xs = [_run_block(layer, block, x) for x in xs]
    finally:
        student.train(was_training)
    return fits


def _refit(dense: nn.Linear, fit: _Normal, held: _Normal, ridge: float, layer: int, block: str,
           source_layer: int) -> BlockFit:
    old = torch.cat([dense.weight.T, dense.bias[None]]).double()
    lam = ridge * fit.xx.diagonal().mean()
    eye = torch.eye(len(old), dtype=torch.float64, device=old.device)
    new = torch.linalg.solve(fit.xx + lam * eye, fit.xy + lam * old)
    before, after = held.error(old), held.error(new)
    replaced = after < before
    if replaced:
        dense.weight.copy_(new[:-1].T.to(dense.weight.dtype))
        dense.bias.copy_(new[-1].to(dense.bias.dtype))
    return BlockFit(layer, block, source_layer, before, after if replaced else before, replaced)

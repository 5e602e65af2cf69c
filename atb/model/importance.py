"""How much each unit of a pre-trained BERT-family model matters, measured on calibration batches.

Units are the ones `permute.py` can reorder: hidden channels, attention heads, the query/key and value dims
inside each head, and FFN neurons; each layer's importance (1 - cos(layer input, layer output), averaged
over tokens) is recorded too. Two estimators:
- `activation`: magnitudes of what each unit writes (LayerNorm outputs for hidden channels, a head's
  contribution through the output projection, an FFN neuron's activation times its output weight norm).
  It needs no loss, so it works for encoders that ship without an MLM head. (Its FFN order is not the
  ranking of these scores but `ffn_order.py`'s, which also sees what neurons share.)
- `taylor`: first-order Taylor |w * dL/dw| summed over each unit's weights, with the MLM loss (the model's
  own MLM head, or the word embeddings as a tied decoder when it has none).
Every statistic is a sum over tokens, all-reduced over ranks before it is normalised, so N ranks that split
the calibration batches compute what one rank computes on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atb.model.bert_source import Reduce, SourceDims, encoder_model
from atb.model.permute import LayerOrder, ModelOrder

ESTIMATORS = ("activation", "taylor")


@dataclass
class Importance:
    estimator: str
    samples: int
    hidden: torch.Tensor  # [hidden]
    heads: torch.Tensor  # [layers, heads]
    qk_dims: torch.Tensor  # [layers, heads, head_dim]
    v_dims: torch.Tensor  # [layers, heads, head_dim]
    ffn: torch.Tensor  # [layers, ffn]
    layers: torch.Tensor  # [layers]

    def order(self, within_heads: bool = False) -> ModelOrder:
        """Most important hidden channels, heads and FFN neurons first. The dims inside each head
        (`within_heads`) are scored and recorded but keep the source's order by default, for the head bases
        applied after this order to rotate. Ranking hidden channels pays off only with develop's LayerNorm
        refit, since a sub-network's LayerNorm normalises over its leading channels only (bench/RESULTS.md)."""
        def rank(scores: torch.Tensor) -> torch.Tensor:
            return torch.argsort(scores, dim=-1, descending=True, stable=True)

        def kept(scores: torch.Tensor) -> torch.Tensor:
            return torch.arange(scores.shape[-1]).expand_as(scores).clone()

        inside = rank if within_heads else kept
        return ModelOrder(rank(self.hidden), [
            LayerOrder(rank(self.heads[i]), inside(self.qk_dims[i]), inside(self.v_dims[i]), rank(self.ffn[i]))
            for i in range(len(self.layers))])

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "Importance":
        return cls(**{k: (torch.tensor(v, dtype=torch.float64) if isinstance(v, list) else v) for k, v in data.items()})


class _Recorder:
    """Forward hooks that add each unit's activation statistics (sums over real tokens) into fp64 buffers."""

    def __init__(self, model: nn.Module, dims: SourceDims):
        device = next(model.parameters()).device
        L, A, D = dims.layers, dims.heads, dims.head_dim

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        self.dims, self.tokens, self.samples = dims, zeros(), zeros()
        self.sums = {"hidden": zeros(dims.hidden), "heads": zeros(L, A), "v": zeros(L, A, D), "q": zeros(L, A, D),
                     "k": zeros(L, A, D), "ffn": zeros(L, dims.ffn), "layers": zeros(L)}
        self.mask: torch.Tensor | None = None
        base = encoder_model(model)
        self.handles = [base.embeddings.LayerNorm.register_forward_hook(self._stream)]
        for i, layer in enumerate(base.encoder.layer):
            attn = layer.attention
            self.handles += [
                attn.output.LayerNorm.register_forward_hook(self._stream),
                layer.output.LayerNorm.register_forward_hook(self._stream),
                attn.self.query.register_forward_hook(self._head_dims(i, "q")),
                attn.self.key.register_forward_hook(self._head_dims(i, "k")),
                attn.output.dense.register_forward_pre_hook(self._context(i, attn.output.dense)),
                layer.intermediate.register_forward_hook(self._ffn(i, layer.output.dense)),
                layer.register_forward_hook(self._layer(i)),
            ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _masked_abs_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over real tokens of |x|, keeping the last dim(s): x is [batch, seq, ...]."""
        weights = self.mask.to(x.dtype).view(*self.mask.shape, *([1] * (x.dim() - 2)))
        return (x.abs() * weights).sum((0, 1)).double()

    def _stream(self, module, args, out) -> None:
        self.sums["hidden"] += self._masked_abs_sum(out.detach())

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().view(*x.shape[:2], self.dims.heads, self.dims.head_dim)

    def _head_dims(self, i: int, which: str):
        def hook(module, args, out):
            self.sums[which][i] += self._masked_abs_sum(self._split(out))
        return hook

    def _context(self, i: int, dense: nn.Linear):
        def hook(module, args):
            ctx = self._split(args[0])  # [batch, seq, heads, head_dim]: each head's attention output
            w = dense.weight.detach().view(-1, self.dims.heads, self.dims.head_dim)  # [hidden, heads, head_dim]
            written = torch.einsum("bsad,had->bsah", ctx, w).norm(dim=-1)  # what each head adds to the stream
            self.sums["heads"][i] += self._masked_abs_sum(written)
            self.sums["v"][i] += self._masked_abs_sum(ctx) * w.norm(dim=0).double()
        return hook

    def _ffn(self, i: int, out_dense: nn.Linear):
        def hook(module, args, out):
            self.sums["ffn"][i] += self._masked_abs_sum(out.detach()) * out_dense.weight.detach().norm(dim=0).double()
        return hook

    def _layer(self, i: int):
        def hook(module, args, out):
            x_in, x_out = args[0].detach(), (out[0] if isinstance(out, tuple) else out).detach()
            change = 1 - F.cosine_similarity(x_in, x_out, dim=-1)  # [batch, seq]
            self.sums["layers"][i] += (change * self.mask.to(change.dtype)).sum().double()
        return hook


def compute_importance(model: nn.Module, batches: list[dict[str, torch.Tensor]], dims: SourceDims,
                       estimator: str = "activation", reduce: Reduce = lambda t: t) -> Importance:
    """Scores for `model` (a transformers BERT-family model, MaskedLM for `taylor` when it has an MLM head)
    over this rank's `batches`; `reduce` sums a tensor over ranks."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown importance estimator {estimator!r}; choose one of {ESTIMATORS}")
    model.eval()
    recorder = _Recorder(model, dims)
    try:
        for batch in batches:
            recorder.mask = batch["attention_mask"].bool()
            recorder.tokens += recorder.mask.sum()
            recorder.samples += len(batch["input_ids"])
            with torch.set_grad_enabled(estimator == "taylor"):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"])
                if estimator == "taylor":
                    _mlm_loss(model, out, batch["labels"]).backward()
    finally:
        recorder.remove()
    sums = {k: reduce(v) for k, v in recorder.sums.items()}
    tokens = float(reduce(recorder.tokens))
    act = {k: v / max(tokens, 1.0) for k, v in sums.items()}
    scores = {"hidden": act["hidden"], "heads": act["heads"], "qk_dims": act["q"] * act["k"],
              "v_dims": act["v"], "ffn": act["ffn"]}
    if estimator == "taylor":
        scores = _taylor_scores(model, dims, reduce)
        model.zero_grad(set_to_none=True)
    return Importance(estimator=estimator, samples=int(reduce(recorder.samples)), layers=act["layers"].cpu(),
                      **{k: v.cpu() for k, v in scores.items()})


def _mlm_loss(model: nn.Module, out, labels: torch.Tensor) -> torch.Tensor:
    logits = getattr(out, "logits", None)
    if logits is None:  # no MLM head: the word embeddings act as a tied decoder
        logits = out.last_hidden_state @ encoder_model(model).embeddings.word_embeddings.weight.T
    # a sum over tokens, not a per-batch mean, so the gradient does not depend on how batches are split
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum")


def _taylor_scores(model: nn.Module, dims: SourceDims, reduce: Reduce) -> dict[str, torch.Tensor]:
    """|w * grad| (gradients summed over ranks) added up per unit."""
    A, D = dims.heads, dims.head_dim

    grads = {p: reduce(p.grad.detach().double()) for p in model.parameters() if p.grad is not None}

    def saliency(p: torch.Tensor) -> torch.Tensor:
        return (p.detach().double() * grads[p]).abs()

    base = encoder_model(model)
    hidden = torch.zeros(dims.hidden, dtype=torch.float64, device=base.embeddings.LayerNorm.weight.device)
    emb = base.embeddings
    for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
        hidden += saliency(table.weight).sum(0)
    hidden += saliency(emb.LayerNorm.weight) + saliency(emb.LayerNorm.bias)
    heads, qk, v, ffn = [], [], [], []
    for layer in base.encoder.layer:
        s, o = layer.attention.self, layer.attention.output
        per_row = {n: saliency(getattr(s, n).weight).sum(1) + saliency(getattr(s, n).bias)
                   for n in ("query", "key", "value")}
        out_cols = saliency(o.dense.weight).sum(0)
        qk_d = (per_row["query"] + per_row["key"]).view(A, D)
        v_d = (per_row["value"] + out_cols).view(A, D)
        qk.append(qk_d), v.append(v_d), heads.append(qk_d.sum(1) + v_d.sum(1))
        w1, w2 = layer.intermediate.dense, layer.output.dense
        ffn.append(saliency(w1.weight).sum(1) + saliency(w1.bias) + saliency(w2.weight).sum(0))
        for n in ("query", "key", "value"):
            hidden += saliency(getattr(s, n).weight).sum(0)
        hidden += saliency(w1.weight).sum(0) + saliency(w2.weight).sum(1) + saliency(w2.bias)
        hidden += saliency(o.dense.weight).sum(1) + saliency(o.dense.bias)
        for norm in (o.LayerNorm, layer.output.LayerNorm):
            hidden += saliency(norm.weight) + saliency(norm.bias)
    return {"hidden": hidden, "heads": torch.stack(heads), "qk_dims": torch.stack(qk), "v_dims": torch.stack(v),
            "ffn": torch.stack(ffn)}

"""SuperBert: one BERT that holds every architecture of a search space.

`forward(..., arch=a)` runs exactly sub-network `a`: the first `a.layers` layers, the leading sub-matrices
of every weight (per-head for attention, see `slicing.py`), LayerNorm over the active dims, and the MLM
decoder tied to the active columns of the word embeddings. Parameter names are those of transformers'
`BertForMaskedLM`, so a sub-network's state dict *is* a BERT state dict and a BERT checkpoint initialises
the supernet by name.

Each weight is sliced once per call, inside the module that owns it: under ZeRO-3 a parameter is only
gathered while its own module runs, and modules past the sampled depth are never called (every rank
samples the same arch, so the sequence of gathers matches across ranks).

A sub-network trains as fast as the dense BERT of its size (bench/subnet_scaling.py): linear layers use
`elastic_linear`, whose backward is a dense layer's plus one widening of the weight gradient, and the
word embeddings hand the tied decoder a handle so that their two gradients add at the sub-network's size
(`select_shared`). See `slicing.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atb.model.slicing import HeadSlice, Selection, elastic_linear, select, select_2d, select_shared, tied_linear
from atb.space import Arch, SearchSpace


@dataclass
class SuperBertConfig:
    space: dict[str, Any]
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02

    def search_space(self) -> SearchSpace:
        return SearchSpace.from_spec(self.space)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SuperBertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SuperBert config has unknown field(s) {unknown}")
        return cls(**data)


@dataclass
class SuperBertOutput:
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    attention_scores: torch.Tensor | None = None  # last layer, pre-softmax, [batch, heads, seq, seq]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class ElasticLinear(nn.Module):
    """A linear layer every sub-arch slices. The weight starts uninitialised: its owner initialises it
    (SuperBert._init_weights, the KD projection), once, with the RNG stream the model's seed defines."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def sliced(self, out_sel: Selection, in_sel: Selection) -> tuple[torch.Tensor, torch.Tensor | None]:
        bias = select(self.bias, 0, out_sel) if self.bias is not None else None
        return select_2d(self.weight, out_sel, in_sel), bias

    def forward(self, x: torch.Tensor, out_sel: Selection, in_sel: Selection) -> torch.Tensor:
        return elastic_linear(x, self.weight, self.bias, out_sel, in_sel)


class ElasticLayerNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def sliced(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return select(self.weight, 0, size), select(self.bias, 0, size)

    def forward(self, x: torch.Tensor, size: int) -> torch.Tensor:
        weight, bias = self.sliced(size)
        return F.layer_norm(x, (size,), weight, bias, self.eps)


class ElasticEmbedding(nn.Module):
    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim))

    def sliced(self, dim: int) -> torch.Tensor:
        return select(self.weight, 1, dim)

    def forward(self, ids: torch.Tensor, dim: int) -> torch.Tensor:
        return F.embedding(ids, self.sliced(dim))


class WordEmbeddings(ElasticEmbedding):
    """Word embeddings whose weight the MLM decoder reads too (tied, as in transformers).

    `forward` also returns a handle for the decoder (`TiedDecoder`): the decoder's gradient then joins the
    embeddings' at the sub-network's size and the full-size gradient is built once, not twice and summed.
    """

    def forward(self, ids: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        weight, handle = select_shared(self.weight, 1, dim)
        return F.embedding(ids, weight), handle


class Embeddings(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int):
        super().__init__()
        self.word_embeddings = WordEmbeddings(cfg.vocab_size, hidden)
        self.position_embeddings = ElasticEmbedding(cfg.max_position_embeddings, hidden)
        self.token_type_embeddings = ElasticEmbedding(cfg.type_vocab_size, hidden)
        self.LayerNorm = ElasticLayerNorm(hidden, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor,
                hidden: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedded tokens, and the word embeddings' handle for the tied decoder."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        words, handle = self.word_embeddings(input_ids, hidden)
        x = words + self.token_type_embeddings(token_type_ids, hidden)
        x = x + self.position_embeddings(positions, hidden)
        return self.dropout(self.LayerNorm(x, hidden)), handle


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, qkv: int, dropout: float):
        super().__init__()
        self.query = ElasticLinear(hidden, qkv)
        self.key = ElasticLinear(hidden, qkv)
        self.value = ElasticLinear(hidden, qkv)
        self.dropout_p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, hidden: int, heads: HeadSlice,
                want_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, S, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, S, heads.heads, heads.head_dim).transpose(1, 2)

        q = split(self.query(x, heads, hidden))
        k = split(self.key(x, heads, hidden))
        v = split(self.value(x, heads, hidden))
        dropout = self.dropout_p if self.training else 0.0
        scores = None
        if want_scores:  # distillation needs the raw scores, which the fused kernel does not expose
            scores = (q @ k.transpose(-1, -2)) * heads.head_dim ** -0.5
            masked = scores if mask is None else scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            probs = masked.softmax(-1)
            out = F.dropout(probs, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return out.transpose(1, 2).reshape(B, S, heads.size), scores


class AttentionOutput(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, qkv: int):
        super().__init__()
        self.dense = ElasticLinear(qkv, hidden)
        self.LayerNorm = ElasticLayerNorm(hidden, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)


class Attention(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, qkv: int):
        super().__init__()
        self.self = SelfAttention(hidden, qkv, cfg.attention_probs_dropout_prob)
        self.output = AttentionOutput(cfg, hidden, qkv)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.dense = ElasticLinear(hidden, ffn)


class Output(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, ffn: int):
        super().__init__()
        self.dense = ElasticLinear(ffn, hidden)
        self.LayerNorm = ElasticLayerNorm(hidden, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)


class Layer(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, qkv: int, ffn: int):
        super().__init__()
        self.attention = Attention(cfg, hidden, qkv)
        self.intermediate = Intermediate(hidden, ffn)
        self.output = Output(cfg, hidden, ffn)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, arch: Arch, heads: HeadSlice,
                want_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = arch.hidden
        attn, scores = self.attention.self(x, mask, h, heads, want_scores)
        out = self.attention.output
        x = out.LayerNorm(out.dropout(out.dense(attn, h, heads)) + x, h)
        ff = F.gelu(self.intermediate.dense(x, arch.ffn, h))
        ff = self.output.dense(ff, h, arch.ffn)
        x = self.output.LayerNorm(self.output.dropout(ff) + x, h)
        return x, scores


class Encoder(nn.Module):
    def __init__(self, cfg: SuperBertConfig, largest: Arch):
        super().__init__()
        self.layer = nn.ModuleList(
            Layer(cfg, largest.hidden, largest.qkv, largest.ffn) for _ in range(largest.layers))


class BertCore(nn.Module):
    def __init__(self, cfg: SuperBertConfig, largest: Arch):
        super().__init__()
        self.embeddings = Embeddings(cfg, largest.hidden)
        self.encoder = Encoder(cfg, largest)


class PredictionHeadTransform(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int):
        super().__init__()
        self.dense = ElasticLinear(hidden, hidden)
        self.LayerNorm = ElasticLayerNorm(hidden, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, hidden: int) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x, hidden, hidden)), hidden)


class TiedDecoder(nn.Module):
    """The MLM decoder: every vocabulary row of the word embeddings, their first `hidden` columns.

    It registers the word-embedding Parameter itself (as transformers ties it), so ZeRO-3 gathers it when
    the decoder runs rather than needing it registered as an external parameter.
    """

    def __init__(self, word_embeddings: WordEmbeddings, bias: nn.Parameter):
        super().__init__()
        self.weight = word_embeddings.weight
        self.bias = bias

    def forward(self, x: torch.Tensor, hidden: int, handle: torch.Tensor | None = None) -> torch.Tensor:
        """`handle`: what this forward's `WordEmbeddings` returned; without it, plain slicing."""
        if handle is None:
            return elastic_linear(x, self.weight, self.bias, self.weight.shape[0], hidden)
        return tied_linear(x, handle, self.weight, hidden, self.bias)


class Predictions(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, word_embeddings: WordEmbeddings):
        super().__init__()
        self.transform = PredictionHeadTransform(cfg, hidden)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder = TiedDecoder(word_embeddings, self.bias)
        self.vocab_size = cfg.vocab_size

    def forward(self, x: torch.Tensor, hidden: int, handle: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.transform(x, hidden), hidden, handle)


class MLMHead(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, word_embeddings: WordEmbeddings):
        super().__init__()
        self.predictions = Predictions(cfg, hidden, word_embeddings)


class SuperBert(nn.Module):
    def __init__(self, cfg: SuperBertConfig):
        super().__init__()
        self.config = cfg
        self.space = cfg.search_space()
        self.largest = self.space.largest()
        self.bert = BertCore(cfg, self.largest)
        self.cls = MLMHead(cfg, self.largest.hidden, self.bert.embeddings.word_embeddings)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm, zero padding row."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (ElasticLinear, ElasticEmbedding)):  # the tied decoder is neither
                module.weight.normal_(0.0, std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, ElasticLayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
        self.bert.embeddings.word_embeddings.weight[self.config.pad_token_id].zero_()
        self.cls.predictions.bias.zero_()

    def head_slice(self, arch: Arch) -> HeadSlice:
        return HeadSlice(arch.heads, arch.head_dim, self.space.max_head_dim)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, arch: Arch | None = None,
               want_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Last hidden state [batch, seq, arch.hidden] and, if asked, the last layer's attention scores."""
        x, scores, _ = self._encode(input_ids, attention_mask, token_type_ids, arch or self.largest, want_scores)
        return x, scores

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None, arch: Arch,
                want_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """`encode`, plus the word embeddings' handle for the tied decoder."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None  # without padding (packed pre-training blocks) SDPA runs unmasked, as in transformers
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()
        heads = self.head_slice(arch)
        x, handle = self.bert.embeddings(input_ids, token_type_ids, arch.hidden)
        scores = None
        for i, layer in enumerate(self.bert.encoder.layer[: arch.layers]):
            x, scores = layer(x, mask, arch, heads, want_scores and i == arch.layers - 1)
        return x, scores, handle

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, arch: Arch | None = None,
                labels: torch.Tensor | None = None, want_scores: bool = False,
                logits_for_all: bool = False) -> SuperBertOutput:
        """MLM forward. With labels, the head runs only on labelled positions unless `logits_for_all`."""
        arch = arch or self.largest
        hidden, scores, handle = self._encode(input_ids, attention_mask, token_type_ids, arch, want_scores)
        out = SuperBertOutput(last_hidden_state=hidden, attention_scores=scores)
        if labels is None or logits_for_all:
            out.logits = self.cls.predictions(hidden, arch.hidden, handle)
            if labels is not None:
                out.loss = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        else:
            picked = labels != -100
            logits = self.cls.predictions(hidden[picked], arch.hidden, handle)
            out.logits = logits
            out.loss = F.cross_entropy(logits, labels[picked]) if logits.shape[0] else logits.sum() * 0.0
        return out

    # ---- the sub-network as a plain BERT state dict ----------------------------------------------
    @torch.no_grad()
    def sub_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Weights of sub-network `arch` under transformers' BertForMaskedLM names (contiguous copies)."""
        self.space.validate(arch)
        h, heads = arch.hidden, self.head_slice(arch)
        emb = self.bert.embeddings
        sd: dict[str, torch.Tensor] = {
            "bert.embeddings.word_embeddings.weight": emb.word_embeddings.sliced(h),
            "bert.embeddings.position_embeddings.weight": emb.position_embeddings.sliced(h),
            "bert.embeddings.token_type_embeddings.weight": emb.token_type_embeddings.sliced(h),
        }
        sd.update(_prefixed("bert.embeddings.LayerNorm", emb.LayerNorm.sliced(h)))
        for i, layer in enumerate(self.bert.encoder.layer[: arch.layers]):
            p = f"bert.encoder.layer.{i}"
            attn = layer.attention
            for name in ("query", "key", "value"):
                sd.update(_prefixed(f"{p}.attention.self.{name}", getattr(attn.self, name).sliced(heads, h)))
            sd.update(_prefixed(f"{p}.attention.output.dense", attn.output.dense.sliced(h, heads)))
            sd.update(_prefixed(f"{p}.attention.output.LayerNorm", attn.output.LayerNorm.sliced(h)))
            sd.update(_prefixed(f"{p}.intermediate.dense", layer.intermediate.dense.sliced(arch.ffn, h)))
            sd.update(_prefixed(f"{p}.output.dense", layer.output.dense.sliced(h, arch.ffn)))
            sd.update(_prefixed(f"{p}.output.LayerNorm", layer.output.LayerNorm.sliced(h)))
        transform = self.cls.predictions.transform
        sd.update(_prefixed("cls.predictions.transform.dense", transform.dense.sliced(h, h)))
        sd.update(_prefixed("cls.predictions.transform.LayerNorm", transform.LayerNorm.sliced(h)))
        sd["cls.predictions.bias"] = self.cls.predictions.bias
        return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def _prefixed(prefix: str, pair: tuple[torch.Tensor, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    weight, bias = pair
    out = {f"{prefix}.weight": weight}
    if bias is not None:
        out[f"{prefix}.bias"] = bias
    return out

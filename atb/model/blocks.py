"""SuperBert's configuration and its blocks, named and nested as in transformers' `modeling_bert.py`.

Each block owns its forward and slices only its own weights, for the dims of the sub-network it is given
(hidden, per-head qkv, ffn): under ZeRO-3 a parameter is only gathered while its own module runs, and
layers past the sampled depth are never called (every rank samples the same arch, so the gathers match
across ranks). `sub_state_dict` returns the same slices under BertForMaskedLM's names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from atb.model.slicing import (ElasticEmbedding, ElasticLayerNorm, ElasticLinear, HeadSlice, Selection, prefixed,
                              select)
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
    # every sub-network divides attention scores by the square root of this head size (None: its own). A
    # SuperPLM compressed with per-head bases sets the source's: its leading dims carry almost the whole
    # score, so a narrower head keeps the source's softmax temperature. Exports fold it into the query.
    attention_scale_dim: int | None = None
    # the sentence vector an exported classifier reads (cls or mean: tiny.TinyBertPooler); a compressed
    # source's own, so that its sub-networks are fine-tuned the way it was trained
    classifier_pooling: str = "cls"
    # whether the SuperPLM carries its source's [CLS] pooler (frozen: no objective here trains it), so that a
    # [CLS] classifier fine-tuned from an export starts from the source's pooler, as from the source itself
    pooler: bool = False

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


class Embeddings(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int):
        super().__init__()
        self.word_embeddings = ElasticEmbedding(cfg.vocab_size, hidden)
        self.position_embeddings = ElasticEmbedding(cfg.max_position_embeddings, hidden)
        self.token_type_embeddings = ElasticEmbedding(cfg.type_vocab_size, hidden)
        self.LayerNorm = ElasticLayerNorm(hidden, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, hidden: int) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids, hidden) + self.token_type_embeddings(token_type_ids, hidden)
        x = x + self.position_embeddings(positions, hidden)
        return self.dropout(self.LayerNorm(x, hidden))

    def sub_state_dict(self, hidden: int) -> dict[str, torch.Tensor]:
        return {**prefixed("word_embeddings", self.word_embeddings.sub_state_dict(hidden)),
                **prefixed("position_embeddings", self.position_embeddings.sub_state_dict(hidden)),
                **prefixed("token_type_embeddings", self.token_type_embeddings.sub_state_dict(hidden)),
                **prefixed("LayerNorm", self.LayerNorm.sub_state_dict(hidden))}


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, qkv: int, dropout: float, scale_dim: int | None = None):
        super().__init__()
        self.query = ElasticLinear(hidden, qkv)
        self.key = ElasticLinear(hidden, qkv)
        self.value = ElasticLinear(hidden, qkv)
        self.dropout_p = dropout
        self.scale_dim = scale_dim

    def scale(self, heads: HeadSlice) -> float:
        return (self.scale_dim or heads.head_dim) ** -0.5

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
            scores = (q @ k.transpose(-1, -2)) * self.scale(heads)
            masked = scores if mask is None else scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            out = F.dropout(masked.softmax(-1), dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=self.scale(heads))
        return out.transpose(1, 2).reshape(B, S, heads.size), scores

    def sub_state_dict(self, hidden: int, heads: HeadSlice) -> dict[str, torch.Tensor]:
        state = {name: t for proj in ("query", "key", "value")
                 for name, t in prefixed(proj, getattr(self, proj).sub_state_dict(heads, hidden)).items()}
        # an exported model divides by its own head size: the query carries the rest of this scale
        if self.scale_dim and self.scale_dim != heads.head_dim:
            fold = (heads.head_dim / self.scale_dim) ** 0.5
            state = {name: t * fold if name.startswith("query.") else t for name, t in state.items()}
        return state


class ResidualOutput(nn.Module):
    """dense, dropout, then LayerNorm of the sum with the block's input: BERT's BertSelfOutput and BertOutput."""

    def __init__(self, cfg: SuperBertConfig, in_features: int, hidden: int):
        super().__init__()
        self.dense = ElasticLinear(in_features, hidden)
        self.LayerNorm = ElasticLayerNorm(hidden, cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor, hidden: int, in_sel: Selection) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x, hidden, in_sel)) + residual, hidden)

    def sub_state_dict(self, hidden: int, in_sel: Selection) -> dict[str, torch.Tensor]:
        return {**prefixed("dense", self.dense.sub_state_dict(hidden, in_sel)),
                **prefixed("LayerNorm", self.LayerNorm.sub_state_dict(hidden))}


class Attention(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, qkv: int):
        super().__init__()
        self.self = SelfAttention(hidden, qkv, cfg.attention_probs_dropout_prob, cfg.attention_scale_dim)
        self.output = ResidualOutput(cfg, qkv, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, hidden: int, heads: HeadSlice,
                want_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, scores = self.self(x, mask, hidden, heads, want_scores)
        return self.output(attended, x, hidden, heads), scores

    def sub_state_dict(self, hidden: int, heads: HeadSlice) -> dict[str, torch.Tensor]:
        return {**prefixed("self", self.self.sub_state_dict(hidden, heads)),
                **prefixed("output", self.output.sub_state_dict(hidden, heads))}


class Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.dense = ElasticLinear(hidden, ffn)

    def forward(self, x: torch.Tensor, hidden: int, ffn: int) -> torch.Tensor:
        return F.gelu(self.dense(x, ffn, hidden))

    def sub_state_dict(self, hidden: int, ffn: int) -> dict[str, torch.Tensor]:
        return prefixed("dense", self.dense.sub_state_dict(ffn, hidden))


class Layer(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, qkv: int, ffn: int):
        super().__init__()
        self.attention = Attention(cfg, hidden, qkv)
        self.intermediate = Intermediate(hidden, ffn)
        self.output = ResidualOutput(cfg, ffn, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, arch: Arch, heads: HeadSlice,
                want_scores: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, scores = self.attention(x, mask, arch.hidden, heads, want_scores)
        return self.output(self.intermediate(x, arch.hidden, arch.ffn), x, arch.hidden, arch.ffn), scores

    def sub_state_dict(self, arch: Arch, heads: HeadSlice) -> dict[str, torch.Tensor]:
        return {**prefixed("attention", self.attention.sub_state_dict(arch.hidden, heads)),
                **prefixed("intermediate", self.intermediate.sub_state_dict(arch.hidden, arch.ffn)),
                **prefixed("output", self.output.sub_state_dict(arch.hidden, arch.ffn))}


class Encoder(nn.Module):
    def __init__(self, cfg: SuperBertConfig, largest: Arch):
        super().__init__()
        self.layer = nn.ModuleList(
            Layer(cfg, largest.hidden, largest.qkv, largest.ffn) for _ in range(largest.layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, arch: Arch, heads: HeadSlice,
                want_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first `arch.layers` layers (the others are never called), and the last one's scores if asked."""
        scores = None
        for i, layer in enumerate(self.layer[: arch.layers]):
            x, scores = layer(x, mask, arch, heads, want_scores and i == arch.layers - 1)
        return x, scores

    def sub_state_dict(self, arch: Arch, heads: HeadSlice) -> dict[str, torch.Tensor]:
        return {name: t for i, layer in enumerate(self.layer[: arch.layers])
                for name, t in prefixed(f"layer.{i}", layer.sub_state_dict(arch, heads)).items()}


class Pooler(nn.Module):
    """BERT's pooler: the [CLS] state through dense + tanh. Nothing in pre-training reads it, so it is frozen."""

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = ElasticLinear(hidden, hidden)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, hidden: int) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0], hidden, hidden))

    def sub_state_dict(self, hidden: int) -> dict[str, torch.Tensor]:
        return prefixed("dense", self.dense.sub_state_dict(hidden, hidden))


class BertCore(nn.Module):
    def __init__(self, cfg: SuperBertConfig, largest: Arch):
        super().__init__()
        self.embeddings = Embeddings(cfg, largest.hidden)
        self.encoder = Encoder(cfg, largest)
        self.pooler = Pooler(largest.hidden) if cfg.pooler else None

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, mask: torch.Tensor | None,
                arch: Arch, heads: HeadSlice, want_scores: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encoder(self.embeddings(input_ids, token_type_ids, arch.hidden), mask, arch, heads, want_scores)

    def sub_state_dict(self, arch: Arch, heads: HeadSlice) -> dict[str, torch.Tensor]:
        pooler = {} if self.pooler is None else prefixed("pooler", self.pooler.sub_state_dict(arch.hidden))
        return {**prefixed("embeddings", self.embeddings.sub_state_dict(arch.hidden)),
                **prefixed("encoder", self.encoder.sub_state_dict(arch, heads)), **pooler}


class PredictionHeadTransform(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int):
        super().__init__()
        self.dense = ElasticLinear(hidden, hidden)
        self.LayerNorm = ElasticLayerNorm(hidden, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, hidden: int) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x, hidden, hidden)), hidden)

    def sub_state_dict(self, hidden: int) -> dict[str, torch.Tensor]:
        return {**prefixed("dense", self.dense.sub_state_dict(hidden, hidden)),
                **prefixed("LayerNorm", self.LayerNorm.sub_state_dict(hidden))}


class TiedDecoder(nn.Module):
    """The MLM decoder: every vocabulary row of the word embeddings, their first `hidden` columns.

    It registers the word-embedding Parameter itself (as transformers ties it), so ZeRO-3 gathers it when
    the decoder runs rather than needing it registered as an external parameter.
    """

    def __init__(self, word_embeddings: ElasticEmbedding, bias: nn.Parameter):
        super().__init__()
        self.weight = word_embeddings.weight
        self.bias = bias

    def forward(self, x: torch.Tensor, hidden: int) -> torch.Tensor:
        return F.linear(x, select(self.weight, 1, hidden), self.bias)


class Predictions(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, word_embeddings: ElasticEmbedding):
        super().__init__()
        self.transform = PredictionHeadTransform(cfg, hidden)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder = TiedDecoder(word_embeddings, self.bias)

    def forward(self, x: torch.Tensor, hidden: int) -> torch.Tensor:
        return self.decoder(self.transform(x, hidden), hidden)

    def sub_state_dict(self, hidden: int) -> dict[str, torch.Tensor]:
        """The transform and the bias; the decoder's weight is the word embeddings' (extraction ties them)."""
        return {**prefixed("transform", self.transform.sub_state_dict(hidden)), "bias": self.bias}


class MLMHead(nn.Module):
    def __init__(self, cfg: SuperBertConfig, hidden: int, word_embeddings: ElasticEmbedding):
        super().__init__()
        self.predictions = Predictions(cfg, hidden, word_embeddings)

    def forward(self, x: torch.Tensor, hidden: int) -> torch.Tensor:
        return self.predictions(x, hidden)

    def sub_state_dict(self, hidden: int) -> dict[str, torch.Tensor]:
        return prefixed("predictions", self.predictions.sub_state_dict(hidden))

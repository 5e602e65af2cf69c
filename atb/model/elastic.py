"""SuperBert: one BERT that holds every architecture of a search space.

`forward(..., arch=a)` runs exactly sub-network `a`: the first `a.layers` layers, the leading sub-matrices
of every weight (per-head for attention, see `slicing.py`), LayerNorm over the active dims, and the MLM
decoder tied to the active columns of the word embeddings. Parameter names are those of transformers'
`BertForMaskedLM`, so a sub-network's state dict *is* a BERT state dict and a BERT checkpoint initialises
the supernet by name. The blocks, each slicing its own weights, are in `blocks.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from atb.model.blocks import BertCore, MLMHead, SuperBertConfig
from atb.model.slicing import ElasticEmbedding, ElasticLayerNorm, ElasticLinear, HeadSlice, prefixed
from atb.space import Arch

__all__ = ["SuperBert", "SuperBertConfig", "SuperBertOutput"]


@dataclass
class SuperBertOutput:
    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    attention_scores: torch.Tensor | None = None  # last layer, pre-softmax, [batch, heads, seq, seq]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


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
        arch = arch or self.largest
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None  # without padding (packed pre-training blocks) SDPA runs unmasked, as in transformers
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask[:, None, None, :].bool()
        return self.bert(input_ids, token_type_ids, mask, arch, self.head_slice(arch), want_scores)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, arch: Arch | None = None,
                labels: torch.Tensor | None = None, want_scores: bool = False,
                logits_for_all: bool = False) -> SuperBertOutput:
        """MLM forward. With labels, the head runs only on labelled positions unless `logits_for_all`."""
        arch = arch or self.largest
        hidden, scores = self.encode(input_ids, attention_mask, token_type_ids, arch, want_scores)
        out = SuperBertOutput(last_hidden_state=hidden, attention_scores=scores)
        if labels is None or logits_for_all:
            out.logits = self.cls(hidden, arch.hidden)
            if labels is not None:
                out.loss = F.cross_entropy(out.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        else:
            picked = labels != -100
            logits = self.cls(hidden[picked], arch.hidden)
            out.logits = logits
            out.loss = F.cross_entropy(logits, labels[picked]) if logits.shape[0] else logits.sum() * 0.0
        return out

    @torch.no_grad()
    def sub_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """Weights of sub-network `arch` under transformers' BertForMaskedLM names (contiguous copies)."""
        self.space.validate(arch)
        sd = {**prefixed("bert", self.bert.sub_state_dict(arch, self.head_slice(arch))),
              **prefixed("cls", self.cls.sub_state_dict(arch.hidden))}
        return {k: v.detach().clone().contiguous() for k, v in sd.items()}

"""TinyBert: a plain transformers BERT that stock BERT cannot express: attention width (qkv) other than the
hidden size, or a classifier that reads the mean over tokens instead of [CLS].

This file is copied verbatim into every exported folder that is not a vanilla BERT, so that
`AutoModel*.from_pretrained(folder, trust_remote_code=True)` works where atb is not installed: it imports
nothing but torch and transformers. Parameter names follow transformers' BERT.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import (BaseModelOutputWithPooling, MaskedLMOutput, QuestionAnsweringModelOutput,
                                           SequenceClassifierOutput)


class TinyBertConfig(PretrainedConfig):
    model_type = "atb_tinybert"

    def __init__(self, vocab_size: int = 30522, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_attention_heads: int = 12, qkv_size: int | None = None, intermediate_size: int = 3072,
                 hidden_act: str = "gelu", hidden_dropout_prob: float = 0.1,
                 attention_probs_dropout_prob: float = 0.1, max_position_embeddings: int = 512,
                 type_vocab_size: int = 2, initializer_range: float = 0.02, layer_norm_eps: float = 1e-12,
                 pad_token_id: int = 0, classifier_dropout: float | None = None, classifier_pooling: str = "cls",
                 **kwargs):
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.qkv_size = qkv_size if qkv_size is not None else hidden_size
        if self.qkv_size % num_attention_heads:
            raise ValueError(f"qkv_size {self.qkv_size} is not divisible by {num_attention_heads} heads")
        self.intermediate_size, self.hidden_act = intermediate_size, hidden_act
        self.hidden_dropout_prob, self.attention_probs_dropout_prob = hidden_dropout_prob, attention_probs_dropout_prob
        if classifier_pooling not in ("cls", "mean"):
            raise ValueError(f"classifier_pooling must be 'cls' or 'mean', got {classifier_pooling!r}")
        self.classifier_dropout, self.classifier_pooling = classifier_dropout, classifier_pooling
        self.max_position_embeddings, self.type_vocab_size = max_position_embeddings, type_vocab_size
        self.initializer_range, self.layer_norm_eps = initializer_range, layer_norm_eps


class TinyBertEmbeddings(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class TinyBertSelfAttention(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.qkv_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.qkv_size)
        self.key = nn.Linear(config.hidden_size, config.qkv_size)
        self.value = nn.Linear(config.hidden_size, config.qkv_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, S, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout_p if self.training else 0.0)
        return out.transpose(1, 2).reshape(B, S, self.num_heads * self.head_dim)


class TinyBertOutput(nn.Module):
    """A block's projection back to the hidden size, plus the residual, normalised (as BERT's `*.output`)."""

    def __init__(self, config: TinyBertConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class TinyBertAttention(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.self = TinyBertSelfAttention(config)
        self.output = TinyBertOutput(config, config.qkv_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class TinyBertIntermediate(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class TinyBertLayer(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.attention = TinyBertAttention(config)
        self.intermediate = TinyBertIntermediate(config)
        self.output = TinyBertOutput(config, config.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class TinyBertEncoder(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(TinyBertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


def mean_over_tokens(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    weights = torch.ones_like(x[..., :1]) if attention_mask is None else attention_mask[..., None].to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TinyBertPooler(nn.Module):
    """The sentence vector a classifier reads: BERT's [CLS] state through dense + tanh, or, for encoders
    trained as sentence embedders (whose [CLS] state was never trained to summarise), the mean over tokens."""

    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if config.classifier_pooling == "cls" else None

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return mean_over_tokens(x, attention_mask) if self.dense is None else torch.tanh(self.dense(x[:, 0]))


class TinyBertPreTrainedModel(PreTrainedModel):
    config_class = TinyBertConfig
    base_model_prefix = "bert"
    _supports_sdpa = True


class TinyBertModel(TinyBertPreTrainedModel):
    def __init__(self, config: TinyBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = TinyBertEmbeddings(config)
        self.encoder = TinyBertEncoder(config)
        self.pooler = TinyBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **kwargs) -> BaseModelOutputWithPooling:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # A boolean mask keeps SDPA on its fused kernels; None (no padding) is cheaper still. An exported
        # graph (ONNX) cannot branch on values, so it always takes the masked path, right for any input.
        mask = None
        exporting = bool(getattr(torch.compiler, "is_exporting", lambda: False)())  # older torch: no torch.export
        if attention_mask is not None and (exporting or not bool(attention_mask.all())):
            mask = attention_mask[:, None, None, :].bool()
        x = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
        pooled = self.pooler(x, attention_mask) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled)


class TinyBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class TinyBertLMPredictionHead(nn.Module):
    def __init__(self, config: TinyBertConfig):
        super().__init__()
        self.transform = TinyBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class TinyBertForMaskedLM(TinyBertPreTrainedModel):
    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                          "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: TinyBertConfig):
        super().__init__(config)
        self.bert = TinyBertModel(config, add_pooling_layer=False)
        # called like BERT's BertOnlyMLMHead, with its parameter names (cls.predictions.*)
        self.cls = nn.Sequential(OrderedDict(predictions=TinyBertLMPredictionHead(config)))
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs) -> MaskedLMOutput:
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.cls(hidden)
        loss = None if labels is None else F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits)


class TinyBertForSequenceClassification(TinyBertPreTrainedModel):
    def __init__(self, config: TinyBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = TinyBertModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output
        logits = self.classifier(self.dropout(pooled))
        return SequenceClassifierOutput(loss=None if labels is None else self.loss(logits, labels), logits=logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss BertForSequenceClassification picks for the same config and labels."""
        if self.config.problem_type is None:
            integral = labels.dtype in (torch.long, torch.int)
            self.config.problem_type = ("regression" if self.num_labels == 1 else
                                        "single_label_classification" if integral else "multi_label_classification")
        if self.config.problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float().view(-1))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.float())


class TinyBertForQuestionAnswering(TinyBertPreTrainedModel):
    def __init__(self, config: TinyBertConfig):
        super().__init__(config)
        self.num_labels = 2
        self.bert = TinyBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, start_positions: torch.Tensor | None = None,
                end_positions: torch.Tensor | None = None, **kwargs) -> QuestionAnsweringModelOutput:
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        start_logits, end_logits = self.qa_outputs(hidden).unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            start, end = start_positions.clamp(0, ignored), end_positions.clamp(0, ignored)
            loss = (F.cross_entropy(start_logits, start, ignore_index=ignored)
                    + F.cross_entropy(end_logits, end, ignore_index=ignored)) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits.contiguous(),
                                            end_logits=end_logits.contiguous())


AUTO_MAP = {
    "AutoConfig": "TinyBertConfig",
    "AutoModel": "TinyBertModel",
    "AutoModelForMaskedLM": "TinyBertForMaskedLM",
    "AutoModelForSequenceClassification": "TinyBertForSequenceClassification",
    "AutoModelForQuestionAnswering": "TinyBertForQuestionAnswering",
}

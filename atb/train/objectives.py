"""Training objectives of a SuperPLM step: MLM, knowledge distillation from a teacher, in-place distillation.

KD follows the paper: MSE between the last layer's attention scores of student and teacher (so their head
counts must match) plus MSE between last hidden states, the student's mapped to the teacher's width by a
learned projection. The projection is elastic like every other supernet weight: a sub-arch of hidden `h`
uses its first `h` input columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from atb.model.bert_source import build_model, read_config
from atb.model.elastic import SuperBert


@dataclass
class TeacherOutput:
    hidden: torch.Tensor  # [batch, seq, teacher_hidden]
    scores: torch.Tensor  # [batch, heads, seq, seq] last-layer pre-softmax scores


class LastLayerScores:
    """Rebuilds the last layer's pre-softmax attention scores of a transformers BERT-family model from
    its query/key projections (transformers only returns post-softmax probabilities, and only eagerly)."""

    def __init__(self, model: nn.Module):
        base = getattr(model, getattr(model, "base_model_prefix", ""), model)
        encoder = getattr(base, "encoder", None)
        if encoder is None or not hasattr(encoder, "layer"):
            raise ValueError(f"{type(model).__name__} is not a BERT-family encoder "
                             "(needs encoder.layer[*].attention.self.query/key)")
        self.heads = model.config.num_attention_heads
        attn = encoder.layer[-1].attention.self
        self._captured: dict[str, torch.Tensor] = {}
        attn.query.register_forward_hook(lambda m, i, o: self._captured.__setitem__("q", o))
        attn.key.register_forward_hook(lambda m, i, o: self._captured.__setitem__("k", o))

    def pop(self, batch: int, seq: int) -> torch.Tensor:
        q = self._captured.pop("q").view(batch, seq, self.heads, -1).transpose(1, 2)
        k = self._captured.pop("k").view(batch, seq, self.heads, -1).transpose(1, 2)
        return (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5


class Teacher:
    """A frozen transformers BERT-family encoder, run once per batch under no_grad."""

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.hidden_size = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.vocab_size = cfg.vocab_size
        self.scores = LastLayerScores(model)

    @classmethod
    def load(cls, path: str, device: torch.device, dtype: torch.dtype) -> "Teacher":
        try:
            model = build_model(path, read_config(path))
        except OSError as err:
            raise FileNotFoundError(f"teacher {path} could not be loaded as a transformers folder: {err}") from None
        return cls(model.to(device=device, dtype=dtype))

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor) -> TeacherOutput:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return TeacherOutput(hidden=out.last_hidden_state, scores=self.scores.pop(*input_ids.shape))


def check_teacher_fits(teacher: Teacher, student: SuperBert, compare_heads: bool = True) -> None:
    space = student.space
    if compare_heads and not (space.heads.min == space.heads.max == teacher.heads):
        raise ValueError(
            f"KD compares last-layer attention scores head by head: the space '{space.name}' has "
            f"{space.heads.min}..{space.heads.max} heads but the teacher has {teacher.heads}; use a space "
            f"with heads fixed at {teacher.heads} (like the 'kd' preset)")
    if teacher.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher vocab ({teacher.vocab_size}) and SuperPLM vocab ({student.config.vocab_size}) "
                         "differ: the teacher must use the same tokenizer")


def kd_losses(student_scores: torch.Tensor, mapped: torch.Tensor, teacher: TeacherOutput,
              attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attention-score MSE over real (query, key) pairs and hidden MSE over real tokens, each divided by the
    teacher's own variance there, so that both terms are the share of the teacher's signal missed and neither
    outweighs the other by its scale alone; `mapped` is the student's last hidden state projected to the
    teacher's width."""
    if student_scores.shape[1] != teacher.scores.shape[1]:
        raise ValueError(f"KD needs equal head counts: student {student_scores.shape[1]}, "
                         f"teacher {teacher.scores.shape[1]}")
    attn = attention_score_mse(student_scores, teacher.scores, attention_mask)
    tokens = attention_mask.to(mapped.dtype)[..., None]  # [batch, seq, 1]
    teacher_hidden = teacher.hidden.to(mapped.dtype)
    hidden = masked_mse(mapped, teacher_hidden, tokens) / masked_variance(teacher_hidden, tokens)
    return {"kd_attn": attn, "kd_hidden": hidden}


def attention_score_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE over the (query, key) pairs where both tokens are real, for [batch, heads, seq, seq] scores, as a
    share of the teacher's score variance over those pairs."""
    tokens = attention_mask.to(student.dtype)
    pairs = tokens[:, None, :, None] * tokens[:, None, None, :]  # [batch, 1, seq, seq]
    teacher = teacher.to(student.dtype)
    return masked_mse(student, teacher, pairs) / masked_variance(teacher, pairs)


def masked_variance(a: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The variance of `a` over the entries where `weights` are 1 (never below a tiny floor)."""
    mean = (a * weights).sum() / weights.expand_as(a).sum()
    return masked_mse(a, mean, weights).clamp_min(1e-8)


def masked_mse(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean((a - b)^2) over the entries where the 0/1 `weights` (broadcast to a's shape) are 1.

    The same value as `F.mse_loss(a[mask], b[mask])`, without the boolean gather, whose scatter-back in
    backward costs far more on the CPU than these elementwise ops.
    """
    return ((a - b).square() * weights).sum() / weights.expand_as(a).sum()


def inplace_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL from the largest sub-network's (detached) predictions to a smaller one's, at masked positions."""
    return F.kl_div(F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.detach().float(), -1),
                    log_target=True, reduction="batchmean")

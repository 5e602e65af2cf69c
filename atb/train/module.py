"""The module DeepSpeed trains: a SuperBert (plus the KD projection) and the loss of one micro-batch.

All archs of a step go through ONE forward and ONE backward: ZeRO-2 refuses to reduce a gradient twice
within a micro-step, and a single graph lets the sandwich rule's in-place distillation use the largest
sub-network's predictions directly.
"""

from __future__ import annotations

import torch
from torch import nn

from atb.model.elastic import SuperBert
from atb.model.slicing import ElasticLinear
from atb.space import Arch
from atb.train.objectives import TeacherOutput, inplace_distill_loss, kd_losses

OBJECTIVES = ("mlm", "kd")


class SuperPLMTrainModule(nn.Module):
    def __init__(self, supernet: SuperBert, objective: str = "mlm", teacher_hidden: int | None = None,
                 inplace_distill: bool = False, identity_projection: bool = False):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
        self.supernet = supernet
        self.objective = objective
        self.inplace_distill = inplace_distill
        if objective == "kd":
            if teacher_hidden is None:
                raise ValueError("objective 'kd' needs the teacher's hidden size")
            self.kd_projection = ElasticLinear(supernet.largest.hidden, teacher_hidden)
            with torch.no_grad():
                if identity_projection:
                    self.kd_projection.weight.copy_(torch.eye(teacher_hidden, supernet.largest.hidden))
                else:
                    self.kd_projection.weight.normal_(0.0, supernet.config.initializer_range)

    def forward(self, batch: dict[str, torch.Tensor], archs: list[Arch],
                teacher: TeacherOutput | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over archs of each arch's loss; terms are reported per objective (averaged over archs)."""
        terms: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=batch["input_ids"].device)
        largest_logits = None
        for i, arch in enumerate(archs):
            if self.objective == "mlm":
                out = self.supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                    arch=arch, labels=batch["labels"])
                parts = {"mlm": out.loss}
                if self.inplace_distill and i == 0 and len(archs) > 1:
                    largest_logits = out.logits
                elif largest_logits is not None:
                    parts["inplace_kd"] = inplace_distill_loss(out.logits, largest_logits)
            else:
                if teacher is None:
                    raise ValueError("objective 'kd' needs teacher outputs")
                hidden, scores = self.supernet.encode(batch["input_ids"], batch["attention_mask"],
                                                      batch["token_type_ids"], arch, want_scores=True)
                mapped = self.kd_projection(hidden, self.kd_projection.weight.shape[0], arch.hidden)
                parts = kd_losses(scores, mapped, teacher, batch["attention_mask"])
            for name, value in parts.items():
                total = total + value.float()
                terms[name] = terms.get(name, 0.0) + value.detach().float() / len(archs)
        return total / len(archs), terms

"""K students in one DeepSpeed module: the paper's "efficient development" for many targets at once.

Each student is an extracted transformers model (the exact sub-network of the SuperPLM, or a fresh one of
the same arch for the from-scratch comparison). One batch goes through all K; the KD teacher runs once
and its outputs feed all K losses. The students' losses are summed, so each student's gradient is what it
would be if it were trained alone (note: gradient clipping, when enabled, uses the joint norm of all K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from atb.space import Arch
from atb.train.objectives import LastLayerScores, TeacherOutput, kd_losses


class Students(nn.Module):
    def __init__(self, models: list[nn.Module], archs: list[Arch], objective: str, teacher_hidden: int | None = None,
                 projection: nn.Module | None = None):
        super().__init__()
        if len(models) != len(archs) or not models:
            raise ValueError("need one arch per student and at least one student")
        self.students = nn.ModuleList(models)
        self.archs = list(archs)
        self.objective = objective
        self.names = [arch.name for arch in archs]
        if objective == "kd":
            if teacher_hidden is None:
                raise ValueError("objective 'kd' needs the teacher's hidden size")
            self.projections = nn.ModuleList(nn.Linear(a.hidden, teacher_hidden) for a in archs)
            if projection is not None:
                self._inherit(projection)
            self._scores = [LastLayerScores(m) for m in models]

    @torch.no_grad()
    def _inherit(self, projection: nn.Module) -> None:
        """Start each student's projection at the SuperPLM's (its leading columns), like its weights: a random
        one would send random gradients into a student that already matches the teacher through it."""
        for linear, arch in zip(self.projections, self.archs):
            if projection.weight.shape[0] != linear.weight.shape[0] or projection.weight.shape[1] < arch.hidden:
                raise ValueError(f"the SuperPLM's KD projection {tuple(projection.weight.shape)} does not fit "
                                 f"{arch.name} and a teacher of width {linear.weight.shape[0]}")
            linear.weight.copy_(projection.weight[:, :arch.hidden])
            bias = getattr(projection, "bias", None)
            if bias is not None:
                linear.bias.copy_(bias)
            else:
                linear.bias.zero_()

    def student_losses(self, i: int, batch: dict[str, torch.Tensor],
                       teacher: TeacherOutput | None) -> dict[str, torch.Tensor]:
        model = self.students[i]
        hidden = model.bert(batch["input_ids"], attention_mask=batch["attention_mask"],
                            token_type_ids=batch["token_type_ids"]).last_hidden_state
        if self.objective == "mlm":
            picked = batch["labels"] != -100  # the head runs on labelled positions only, as in SuperBert
            logits = model.cls(hidden[picked])
            return {"mlm": F.cross_entropy(logits.float(), batch["labels"][picked])}
        if teacher is None:
            raise ValueError("objective 'kd' needs teacher outputs")
        scores = self._scores[i].pop(*batch["input_ids"].shape)
        return kd_losses(scores, self.projections[i](hidden), teacher, batch["attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor],
                teacher: TeacherOutput | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros((), device=batch["input_ids"].device)
        terms: dict[str, torch.Tensor] = {}
        for i, name in enumerate(self.names):
            parts = self.student_losses(i, batch, teacher)
            student_total = sum(v.float() for v in parts.values())
            total = total + student_total
            terms[f"{name}/loss"] = student_total.detach()
            for key, value in parts.items():
                terms[f"{name}/{key}"] = value.detach().float()
        return total, terms

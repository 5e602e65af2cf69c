"""What a training job plugs into the shared session: its module, its loss, its evaluation, its export.

Pre-training (`pretrain.PretrainJob`) and development (`develop.DevelopJob`) are the two jobs; the session
(`session.run_session`) and the loop (`loop.run_loop`) do everything else the same way for both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atb.train.objectives import Teacher, TeacherOutput


class Job(ABC):
    name: str

    def __init__(self, module: nn.Module, checkpoint_record: dict[str, Any], teacher: Teacher | None):
        self.module = module  # what DeepSpeed wraps into the engine the methods below receive
        self.checkpoint_record = checkpoint_record  # JSON stored with every checkpoint: what rebuilds the model
        self.teacher = teacher

    @abstractmethod
    def loss(self, engine, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One micro-batch's loss (what `engine.backward` takes) and its named terms for the logs."""

    @abstractmethod
    def evaluate(self, engine) -> dict[str, float]:
        """Dev metrics, computed on every rank (ZeRO-3 gathers parameters collectively)."""

    def export(self, engine, ckpt_dir: Path) -> None:
        """Called on every rank after the final step's checkpoint: write what later stages read."""

    def describe_step(self, step: int) -> dict[str, float]:
        """Metrics logged with a step besides its losses."""
        return {}

    def teacher_outputs(self, batch: dict[str, torch.Tensor]) -> TeacherOutput | None:
        if self.teacher is None:
            return None
        return self.teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

"""The loss fitness of the search: how well a sub-network, with weights inherited from a SuperPLM, does
what the SuperPLM was trained for.

`DevLossFitness` scores MLM loss, or the KD loss against a teacher, on held-out dev blocks of the
pre-training corpus: cheap (forward passes only). `RepresentationFitness` scores how similar a
sub-network's last-layer representation is to the teacher's on the same blocks. The slower, task-level alternative is
`finetune_fitness.QuickFinetuneFitness`.

Every score is a pure function of (weights, arch, data): evaluation runs in eval mode under inference_mode
on a fixed list of batches, so the rank that evaluates a candidate, and the order of evaluation, cannot
change its score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from atb.model.elastic import ElasticLinear, SuperBert
from atb.model.tiny import mean_over_tokens
from atb.space import Arch
from atb.train.consolidate import consolidated_extras
from atb.train.objectives import attention_score_mse, kd_losses

Batch = dict[str, torch.Tensor]


class _DevBatchFitness:
    """The SuperPLM in eval mode and the fixed dev batches, on one device."""

    def __init__(self, model: SuperBert, batches: list[Batch], device: torch.device | str):
        if not batches:
            raise ValueError("no dev batches to evaluate on: the dev split is empty (raise --dev_fraction or use a "
                             "larger corpus)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batches = [{k: v.to(self.device) for k, v in b.items()} for b in batches]

    @torch.inference_mode()
    def _teacher_outputs(self, teacher: Any) -> list[Any]:
        """The teacher on every dev batch: the same for every candidate, so it runs once."""
        return [teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in self.batches]


class DevLossFitness(_DevBatchFitness):
    """Mean loss per labelled token (MLM) or per batch (KD) over fixed dev batches; lower is better."""

    higher_is_better = False

    def __init__(self, model: SuperBert, batches: list[Batch], device: torch.device | str = "cpu",
                 objective: str = "mlm", teacher: Any = None, projection: Any = None):
        super().__init__(model, batches, device)
        if objective not in ("mlm", "kd"):
            raise ValueError(f"--fitness objective must be mlm or kd, got {objective!r}")
        if objective == "kd" and teacher is None:
            raise ValueError("KD fitness needs a teacher (--teacher, a transformers encoder folder)")
        self.objective = objective
        self.name = f"{objective}_dev_loss"
        self.projection = projection.to(self.device).eval() if projection is not None else None
        self.teacher_outputs = self._teacher_outputs(teacher) if objective == "kd" else None

    @torch.inference_mode()
    def __call__(self, arch: Arch) -> float:
        self.model.space.validate(arch)
        if self.objective == "kd":
            return self._kd_loss(arch)
        total, tokens = 0.0, 0
        for b in self.batches:
            n = int((b["labels"] != -100).sum())
            if n == 0:
                continue
            out = self.model(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch=arch, labels=b["labels"])
            total += float(out.loss) * n
            tokens += n
        if tokens == 0:
            raise ValueError("the dev batches hold no masked tokens to score")
        return total / tokens

    def _kd_loss(self, arch: Arch) -> float:
        total = 0.0
        for b, t_out in zip(self.batches, self.teacher_outputs):
            hidden, scores = self.model.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch,
                                               want_scores=True)
            if self.projection is None:  # no trained projection: the attention term alone
                total += float(attention_score_mse(scores, t_out.scores, b["attention_mask"]))
            else:
                mapped = self.projection(hidden, self.projection.weight.shape[0], arch.hidden)
                parts = kd_losses(scores, mapped, t_out, b["attention_mask"])
                total += float(sum(parts.values()))
        return total / len(self.batches)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two representations of the same n items ([n, d1] and [n, d2]):
    1 when one is a rotation and rescaling of the other, whatever the two widths."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    norms = (x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()
    return float((y.T @ x).square().sum() / norms.clamp_min(1e-300))


class RepresentationFitness(_DevBatchFitness):
    """How much of the teacher's last-layer representation a sub-network carries: the mean of the linear CKA
    over real tokens and over each block's sentence vector, on fixed dev batches; higher is better.

    Unlike the KD loss it needs no projection, whose zero-padded channels flatter narrow sub-networks, and
    it weighs the sentence vector that the exported sequence classifiers read: the first ([CLS]) token's
    state, or the mean over tokens (`classifier_pooling`; bench/RESULTS.md, proxy_rank)."""

    higher_is_better = True
    name = "cka"

    def __init__(self, model: SuperBert, batches: list[Batch], teacher: Any, device: torch.device | str = "cpu"):
        super().__init__(model, batches, device)
        self.masks = [b["attention_mask"].bool() for b in self.batches]
        hidden = [out.hidden for out in self._teacher_outputs(teacher)]
        self.teacher_tokens = torch.cat([h[m] for h, m in zip(hidden, self.masks)])
        self.teacher_sentences = torch.cat([self._sentences(h, b) for h, b in zip(hidden, self.batches)])

    def _sentences(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.model.config.classifier_pooling == "mean":
            return mean_over_tokens(hidden, batch["attention_mask"])
        return hidden[:, 0]

    @torch.inference_mode()
    def __call__(self, arch: Arch) -> float:
        self.model.space.validate(arch)
        tokens, sentences = [], []
        for b, m in zip(self.batches, self.masks):
            hidden, _ = self.model.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch)
            tokens.append(hidden[m])
            sentences.append(self._sentences(hidden, b))
        return 0.5 * (linear_cka(torch.cat(tokens), self.teacher_tokens)
                      + linear_cka(torch.cat(sentences), self.teacher_sentences))


KD_PROJECTION_FILE = "kd_projection.safetensors"


def save_kd_projection(checkpoint: str | Path, folder: str | Path, trust_checkpoint: bool = False) -> bool:
    """Copy the KD projection of a DeepSpeed checkpoint next to its consolidated SuperPLM folder."""
    state = {k.split("kd_projection.", 1)[1]: v.float().contiguous()
             for k, v in consolidated_extras(checkpoint, trust_checkpoint).items() if k.startswith("kd_projection.")}
    if state:
        save_file(state, str(Path(folder) / KD_PROJECTION_FILE))
    return bool(state)


def load_kd_projection(folder: str | Path):
    """The KD projection trained with the SuperPLM (saved beside the SuperPLM folder), or None."""
    file = Path(folder) / KD_PROJECTION_FILE
    if not file.is_file():
        return None
    state = load_file(str(file))
    weight = state["weight"]
    projection = ElasticLinear(weight.shape[1], weight.shape[0], bias="bias" in state)
    projection.load_state_dict(state)
    return projection



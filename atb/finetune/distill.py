"""Task distillation: a student fine-tuned on the labels and on a fine-tuned teacher's outputs.

The teacher (typically the source model, fine-tuned on the same task with `tools/finetune.py`) scores every
training feature once, before training, in eval mode; those outputs travel with the features as extra
columns, so each epoch costs what plain fine-tuning costs. Each row's loss is the head's usual loss
(cross-entropy, MSE, or QA's start and end cross-entropy) mixed with a soft-target term (Hinton et al., 2015):

    loss = (1 - alpha) * hard + alpha * soft
    soft = T^2 * KL(softmax(teacher / T) || softmax(student / T))     classification, QA start and end
    soft = MSE(student, teacher)                                      regression

A row without a label (`--unlabelled_file`: more of the task's text or questions, which a teacher can score but nobody
labelled) learns from the soft term alone. That is where distillation pays most: a teacher fine-tuned on a
few thousand labelled rows passes what it learnt on through many more unlabelled ones (bench/RESULTS.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import (AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoTokenizer, DataCollatorWithPadding, PreTrainedModel, Trainer)

from atb.data.tokenizer import has_vocabulary
from atb.finetune.remote_code import allow_remote_code
from atb.finetune.tasks import NO_LABEL, Task
from atb.fsutil import atomic_dir

# a padded position of a QA window gets this teacher logit: probability zero after the softmax
PAD_LOGIT = -1e4
LABEL_KEYS = {"classification": ("labels",), "regression": ("labels",), "qa": ("start_positions", "end_positions")}


def teacher_keys(task_type: str) -> tuple[str, ...]:
    """The feature columns that carry the teacher's outputs."""
    return ("teacher_start_logits", "teacher_end_logits") if task_type == "qa" else ("teacher_logits",)


def load_teacher(folder: Path, task: Task, tokenizer: Any, trust_remote_code: bool) -> PreTrainedModel:
    """The fine-tuned teacher in eval mode, refused when its head or tokens do not fit this task and model."""
    trust = allow_remote_code(folder, trust_remote_code)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust)
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"--teacher {folder}: its vocabulary ({config.vocab_size}) is smaller than the model's "
                         f"tokenizer ({len(tokenizer)}); the teacher must read the same tokens")
    teacher_vocab = _folder_vocab(folder, trust)
    if teacher_vocab is not None and teacher_vocab != tokenizer.get_vocab():
        raise ValueError(f"--teacher {folder}: its tokenizer differs from the model's; the teacher must read "
                         "the same tokens")
    if task.task_type == "qa":
        model = AutoModelForQuestionAnswering.from_pretrained(str(folder), trust_remote_code=trust)
    else:
        _check_head(folder, config, task)
        model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=trust)
    return model.eval()


def _folder_vocab(folder: Path, trust: bool) -> dict[str, int] | None:
    if not has_vocabulary(folder):
        return None
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust).get_vocab()


def _check_head(folder: Path, config: Any, task: Task) -> None:
    if task.task_type == "regression":
        if config.num_labels != 1:
            raise ValueError(f"--teacher {folder} has {config.num_labels} outputs; a regression teacher has one")
        return
    names = task.label_names or []
    teacher_names = [str(config.id2label[i]) for i in range(config.num_labels)]
    if teacher_names != [str(n) for n in names]:
        raise ValueError(f"--teacher {folder} predicts labels {teacher_names}, this task has {names}: fine-tune "
                         "the teacher on this task first")


def add_teacher_outputs(teacher: PreTrainedModel, features: datasets.Dataset, tokenizer: Any, task_type: str,
                        batch_size: int, cache: Path | None = None) -> datasets.Dataset:
    """`features` with the teacher's outputs for each row as extra columns (QA: cut to the window's length).

    With `cache`, outputs are kept in a folder under it named by the teacher's weights and the features'
    inputs, so later runs with the same teacher on the same rows (several students) read them instead."""
    if cache is None:
        return datasets.concatenate_datasets([features, _score(teacher, features, tokenizer, task_type, batch_size)],
                                             axis=1)
    folder = cache / _cache_key(teacher, features, task_type, batch_size)
    if not folder.is_dir():
        with atomic_dir(folder, first_wins=True) as tmp:  # ranks and runs scoring at once keep the first
            _score(teacher, features, tokenizer, task_type, batch_size).save_to_disk(str(tmp))
    try:
        scores = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as err:
        raise ValueError(f"--teacher_cache: {folder} is not a saved dataset of teacher outputs ({err}); "
                         "delete it to score again") from None
    if len(scores) != len(features) or set(scores.column_names) != set(teacher_keys(task_type)):
        raise ValueError(f"--teacher_cache: {folder} does not hold this run's teacher outputs; delete it to score again")
    return datasets.concatenate_datasets([features, scores], axis=1)


def _cache_key(teacher: PreTrainedModel, features: datasets.Dataset, task_type: str, batch_size: int) -> str:
    """sha256 over everything the outputs depend on: weights, inputs, head type, batching, device, dtype."""
    digest = hashlib.sha256(f"{task_type} {batch_size} {teacher.device.type} {teacher.dtype}".encode())
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for column in _input_columns(features):
        for ids in features[column]:
            digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()[:32]


def _input_columns(features: datasets.Dataset) -> list[str]:
    return [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in features.column_names]


@torch.inference_mode()
def _score(teacher: PreTrainedModel, features: datasets.Dataset, tokenizer: Any, task_type: str,
           batch_size: int) -> datasets.Dataset:
    """The teacher's outputs for each feature, one column per `teacher_keys`, in the features' order."""
    collate = DataCollatorWithPadding(tokenizer)
    inputs = _input_columns(features)
    columns: dict[str, list] = {key: [None] * len(features) for key in teacher_keys(task_type)}
    # batches of similar length pad less; each row's outputs go back to its place
    order = np.argsort([len(ids) for ids in features["input_ids"]], kind="stable").tolist()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = collate([dict(row) for row in features.select(rows).select_columns(inputs)])
        outputs = teacher(**{k: v.to(teacher.device) for k, v in batch.items()})
        if task_type == "qa":
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            for key, logits in zip(columns, (outputs.start_logits, outputs.end_logits)):
                for row, values, n in zip(rows, logits.float().tolist(), lengths):
                    columns[key][row] = values[:n]
        else:
            for row, values in zip(rows, outputs.logits.float().tolist()):
                columns["teacher_logits"][row] = values
    return datasets.Dataset.from_dict(columns)


class DistillationCollator:
    """Pads a batch as `DataCollatorWithPadding` does, and its teacher outputs to the batch's length."""

    def __init__(self, tokenizer: Any, keys: tuple[str, ...]) -> None:
        self.pad, self.keys = DataCollatorWithPadding(tokenizer), keys

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        teacher = {key: [row.pop(key) for row in rows] for key in self.keys if key in rows[0]}
        batch = self.pad(rows)
        for key, values in teacher.items():
            # QA windows' logits were cut to their lengths: the longest is the padded batch's length
            width = max(len(v) for v in values)
            padded = np.full((len(values), width), PAD_LOGIT, dtype=np.float32)
            for i, v in enumerate(values):
                padded[i, :len(v)] = v
            batch[key] = torch.from_numpy(padded)
        return batch


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2-scaled KL divergence from the teacher's softened distribution to the student's, one per row."""
    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="none").sum(-1) * temperature ** 2


def row_losses(task_type: str, outputs: Any, inputs: dict[str, torch.Tensor],
               temperature: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per training row: the labels' loss (as the model's own head computes it, averaged), the soft loss
    against the teacher (None without teacher outputs), and which rows have a label."""
    if task_type == "qa":
        ends = (outputs.start_logits, outputs.end_logits)
        labelled = inputs["start_positions"] != NO_LABEL["qa"]
        hard = sum(F.cross_entropy(logits.float(), torch.where(labelled, inputs[key], 0), reduction="none")
                   for logits, key in zip(ends, ("start_positions", "end_positions"))) / 2
        soft = None
        if "teacher_start_logits" in inputs:
            soft = sum(soft_loss(s, inputs[k], temperature)
                       for s, k in zip(ends, ("teacher_start_logits", "teacher_end_logits"))) / 2
        return hard, soft, labelled
    logits, labels = outputs.logits.float(), inputs["labels"]
    teacher = inputs.get("teacher_logits")
    if task_type == "regression":
        labelled = ~torch.isnan(labels)
        hard = F.mse_loss(logits.view(-1), torch.where(labelled, labels, 0.0).float(), reduction="none")
        soft = None if teacher is None else F.mse_loss(logits.view(-1), teacher.float().view(-1), reduction="none")
    else:
        labelled = labels != NO_LABEL["classification"]
        hard = F.cross_entropy(logits, torch.where(labelled, labels, 0), reduction="none")
        soft = None if teacher is None else soft_loss(logits, teacher, temperature)
    return hard, soft, labelled


class DistillationTrainer(Trainer):
    """A Trainer whose training loss mixes the labels' loss with the teacher's soft targets, row by row; a row
    without a label (--unlabelled_file) takes the teacher's output in its place."""

    def __init__(self, *args: Any, task_type: str, alpha: float, temperature: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_type, self.alpha, self.temperature = task_type, alpha, temperature

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        targets = {key: inputs.pop(key) for key in (*LABEL_KEYS[self.task_type], *teacher_keys(self.task_type))
                   if key in inputs}
        outputs = model(**inputs)
        hard, soft, labelled = row_losses(self.task_type, outputs, targets, self.temperature)
        if soft is None:  # evaluation features carry no teacher outputs
            loss = hard[labelled].mean()
        else:
            loss = (self.alpha * soft + (1 - self.alpha) * torch.where(labelled, hard, soft)).mean()
        return (loss, outputs) if return_outputs else loss

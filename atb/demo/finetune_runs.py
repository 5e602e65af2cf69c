"""The runs of the demo's fine-tuning stage: every (task, model) pair without results, on one recipe.

The references (the source and the bag-of-words baseline) learn from the labelled rows. Each developed model
then learns from the same labelled rows and from the fine-tuned source as its teacher, which also scores
more of the task's training rows whose labels the students never see: a user who labelled part of their
data has the rest as text, and a compressed model gains most from its teacher there (bench/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from atb.demo.report import finetune_dir
from atb.deploy.runtime import ORT_INT8
from atb.finetune.bow_baseline import BOW_MODEL
from atb.finetune.config import FinetuneConfig
from atb.finetune.tasks import load_task, subsample, write_jsonl

if TYPE_CHECKING:
    from atb.demo.pipeline import Sizes


def run_specs(out: Path, sizes: Sizes, tasks: list[str], models: dict[str, str],
              teacher_row: str | None = None) -> list[dict[str, Any]]:
    """FinetuneConfig fields (+ "restarts") of each run still to do; with `teacher_row`, the students' runs."""
    runs = []
    for task in tasks:
        for row, path in models.items():
            dest = finetune_dir(out, task, row)
            if (dest / "metrics.json").exists():
                continue
            run = {"model": path, "task": task, "out_dir": str(dest), "epochs": sizes.finetune_epochs,
                   "max_train_samples": sizes.finetune_train, "max_eval_samples": sizes.finetune_eval,
                   "max_seq_len": 64, "lr": sizes.finetune_lr, "batch_size": 32,
                   "eval_test": False,  # the report shows dev accuracy
                   # each model is also scored as it is deployed: ONNX Runtime int8
                   "deploy": "none" if path == BOW_MODEL else ORT_INT8,
                   "overwrite": True, "restarts": 0 if path == BOW_MODEL else sizes.finetune_restarts}
            if teacher_row is not None:
                run["teacher"] = str(finetune_dir(out, task, teacher_row) / "model")
                run["unlabelled_file"] = str(unlabelled_text(out, task, sizes.finetune_train, sizes.finetune_unlabelled))
                run["teacher_cache"] = str(out / "finetune" / task / "teacher_outputs")  # scored once per task
            runs.append(run)
    return runs


def unlabelled_text(out: Path, task: str, labelled_rows: int, rows: int) -> Path:
    """`rows` training rows of `task` outside the labelled subset the runs pick, as text alone."""
    path = out / "finetune" / task / "unlabelled.jsonl"
    if path.is_file():
        return path
    loaded = load_task(FinetuneConfig(model="unused", task=task, out_dir="unused"))
    train = loaded.splits["train"].add_column("row", list(range(len(loaded.splits["train"]))))
    labelled = set(subsample(train, labelled_rows, FinetuneConfig.seed)["row"])  # the rows the runs label
    rest = train.filter(lambda example: example["row"] not in labelled).shuffle(seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl(loaded, rest.select(range(min(rows, len(rest)))), path, labels=False)

"""What task distillation is worth: students fine-tuned on labelled rows alone vs with the fine-tuned source
as their teacher on the same labelled rows plus the rest of the task's training text without its labels
(`tools/finetune.py --teacher ... --unlabelled_file ...`), same recipe and seeds.

    .venv/bin/python bench/task_distill.py --students runs/demo/develop/models/<a>,runs/demo/develop/models/<b> \
        --source minilm --out /tmp/task_distill

The task's train split is cut once (a seeded shuffle) into --train_rows labelled rows and the rest, written
without labels. The source is fine-tuned on the labelled rows (seed 0) as the teacher; then each student once
per seed on the labelled rows alone, and once with the teacher and the unlabelled rows (`--with_labelled_only`
adds a third run: the teacher on the labelled rows only). Every run is an ordinary `atb.finetune` run under
--out, and a rerun keeps the finished ones. Default recipe: 3,000 labelled rows, 3 epochs, lr 5e-5, 128
tokens, the whole dev split, seeds 0,1,2.
Last line: BENCH task_distill ratio=<mean over students of (accuracy with the teacher and the unlabelled rows /
accuracy on the labelled rows alone)>.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import bench_line, machine_line  # noqa: E402

from atb.demo.pipeline import source_path  # noqa: E402
from atb.finetune import FinetuneConfig, finetune  # noqa: E402
from atb.finetune.config import finished_record  # noqa: E402
from atb.finetune.tasks import load_task, write_jsonl  # noqa: E402


def split_train(task: str, rows: int, out: Path) -> tuple[Path, Path]:
    """The task's train split as `rows` labelled rows (train.jsonl) and the rest without labels (text.jsonl)."""
    loaded = load_task(FinetuneConfig(model="unused", task=task, out_dir="unused"))
    train = loaded.splits["train"].shuffle(seed=0)
    out.mkdir(parents=True, exist_ok=True)
    return (write_jsonl(loaded, train.select(range(rows)), out / "train.jsonl"),
            write_jsonl(loaded, train.select(range(rows, len(train))), out / "text.jsonl", labels=False))


def run(model: str, out: Path, recipe: dict, **extra) -> float:
    cfg = FinetuneConfig(model=model, out_dir=str(out), **recipe, **extra)
    record = finished_record(cfg) or finetune(cfg)
    return record["dev"]["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--students", required=True, help="comma-separated exported folders")
    parser.add_argument("--source", default="minilm", help="the model the students were compressed from")
    parser.add_argument("--task", default="movie_sentiment")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train_rows", type=int, default=3000)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max_seq_len", type=int, default=128)
    parser.add_argument("--kd_alpha", type=float, default=0.5)
    parser.add_argument("--kd_temperature", type=float, default=2.0)
    parser.add_argument("--with_labelled_only", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    out, seeds = Path(args.out), [int(s) for s in args.seeds.split(",")]
    labelled, text = split_train(args.task, args.train_rows, out / "data")
    dev = load_task(FinetuneConfig(model="unused", task=args.task, out_dir="unused")).files["dev"]
    recipe = {"train_file": str(labelled), "dev_file": str(dev), "epochs": args.epochs, "lr": args.lr,
              "max_seq_len": args.max_seq_len, "eval_test": False}
    source = run(source_path(args.source), out / "source", recipe, seed=0)
    kd = {"teacher": str(out / "source" / "model"), "kd_alpha": args.kd_alpha, "kd_temperature": args.kd_temperature,
          "teacher_cache": str(out / "teacher_outputs")}
    print(f"source (teacher), seed 0, {args.train_rows} labelled rows: dev accuracy {source:.4f}")
    ratios = []
    for student in args.students.split(","):
        name = Path(student).name
        results = {"labelled rows alone": [run(student, out / name / f"labels_{s}", recipe, seed=s) for s in seeds]}
        if args.with_labelled_only:
            results["with the teacher"] = [run(student, out / name / f"teacher_{s}", recipe, seed=s, **kd)
                                           for s in seeds]
        results["with the teacher and the unlabelled rows"] = [
            run(student, out / name / f"unlabelled_{s}", recipe, seed=s, unlabelled_file=str(text), **kd)
            for s in seeds]
        for what, accs in results.items():
            print(f"{name}: {what}: {' '.join(f'{a:.4f}' for a in accs)} -> {statistics.mean(accs):.4f}")
        alone, best = results["labelled rows alone"], results["with the teacher and the unlabelled rows"]
        ratios.append(statistics.mean(best) / statistics.mean(alone))
    print(bench_line("task_distill", statistics.mean(ratios)))


if __name__ == "__main__":
    main()

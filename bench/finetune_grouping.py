"""Fine-tuning with batches grouped by length (`tools/finetune.py --group_by_length true`) vs randomly drawn
batches (the default): training time and dev accuracy of the same model, task, rows and recipe.

    .venv/bin/python bench/finetune_grouping.py                      # the demo's source, its recipe
    .venv/bin/python bench/finetune_grouping.py --model runs/demo/develop/models/<arch> --repeats 3

Each repeat fine-tunes twice, grouped and random one after the other (the order alternating between
repeats), on one thread; a run's time is the Trainer's training time (`metrics.json` train.time_s), so
model loading, tokenisation and evaluation stay out of it. Short texts of uneven length pad every random
batch to its longest row; grouping pads far less, and the examples of each epoch are the same. Read the
accuracies too: where length predicts the label, grouped batches are also batches of one label.

The last line is `BENCH finetune_grouping ratio=<median grouped time / median random time>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import bench_line, machine_line, set_threads
from atb.demo.pipeline import source_path
from atb.finetune import FinetuneConfig, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="", help="exported folder (default: all-MiniLM-L6-v2, the demo's source)")
    parser.add_argument("--task", default="movie_sentiment")
    parser.add_argument("--rows", type=int, default=1000, help="training rows (the demo's)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 rows, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats, args.epochs = 64, 1, 1.0
    set_threads(args.threads)
    model = args.model or str(source_path("minilm"))
    times: dict[bool, list[float]] = {True: [], False: []}
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="atb-bench-") as tmp:
        for repeat in range(args.repeats):
            for grouped in ((True, False) if repeat % 2 == 0 else (False, True)):
                cfg = FinetuneConfig(model=model, task=args.task, out_dir=str(Path(tmp) / f"{repeat}-{grouped}"),
                                     max_seq_len=64, epochs=args.epochs, lr=args.lr, batch_size=32,
                                     max_train_samples=args.rows, max_eval_samples=500, eval_test=False,
                                     group_by_length=grouped, report_to=["none"])
                record = finetune(cfg)
                times[grouped].append(record["train"]["time_s"])
                print(f"repeat {repeat} {'grouped' if grouped else 'random '}: train {record['train']['time_s']:.1f} s, "
                      f"train loss {record['train']['loss']:.4f}, dev accuracy {record['dev']['accuracy']:.3f}",
                      flush=True)
    print(bench_line("finetune_grouping", statistics.median(times[True]) / statistics.median(times[False])))


if __name__ == "__main__":
    main()

"""One model fine-tuned with several seeds: each run, and the mean and spread of their metrics.

One seed moves a small model's dev accuracy by a point or more, as much as shapes of equal latency differ
(bench/RESULTS.md), so models are compared on the mean over seeds. Each run is an ordinary fine-tuning run in
`<out_dir>/seed_<n>`; the whole folder is built beside it and renamed into place when every seed is done, and
a re-run after an interruption keeps the seeds that had finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from atb.cli import config_record
from atb.finetune.config import FinetuneConfig, finished_record
from atb.fsutil import open_staging, publish_staging, staging_path, write_json_atomic

SHARED = ("task", "task_type", "files", "model", "arch_name", "params", "pooling", "labels", "sizes",
          "majority_baseline")


def finetune_seeds(cfg: FinetuneConfig, run_one: Callable[[FinetuneConfig], dict[str, Any]]) -> dict[str, Any]:
    """Run `run_one` once per seed of `cfg.seeds`; returns what it writes to `<out_dir>/metrics.json`."""
    out_dir, seeds = Path(cfg.out_dir), cfg.seeds or []
    main = os.environ.get("RANK", "0") == "0"
    staging = open_staging(out_dir, resume=not cfg.overwrite) if main else staging_path(out_dir)
    records = []
    for seed in seeds:
        # every rank decides alike which seeds are done: the files it reads change only when a run publishes
        one = dataclasses.replace(cfg, seed=seed, seeds=None, out_dir=str(staging / f"seed_{seed}"), overwrite=True)
        done = None if cfg.overwrite else finished_record(dataclasses.replace(one, overwrite=False))
        records.append(done or run_one(one))  # a run left with other settings is replaced
    summary = {**summarize(records, seeds), **config_record(cfg)}
    if main:
        for seed in seeds:  # each run's record names the folder it will live in
            _point_at(staging / f"seed_{seed}" / "metrics.json", out_dir / f"seed_{seed}")
        write_json_atomic(staging / "metrics.json", summary)
        publish_staging(staging, out_dir)
    return summary


def summarize(records: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """What the runs share, the mean and the standard deviation over seeds of each numeric metric of each
    evaluated split (as trained, and as deployed when the runs were), and each seed's own metrics."""
    summary = {key: records[0][key] for key in SHARED if key in records[0]}
    summary.update(_over_seeds(records))
    deployed = [r.get("deployed") or {} for r in records]
    if all("runtime" in d and "error" not in d for d in deployed):
        summary["deployed"] = {"runtime": deployed[0]["runtime"], **_over_seeds(deployed)}
    summary["runs"] = [{"seed": seed, **{k: r[k] for k in ("dev", "test", "train", "deployed") if k in r}}
                       for seed, r in zip(seeds, records)]
    return summary


def _over_seeds(records: list[dict[str, Any]]) -> dict[str, Any]:
    """`split` -> the mean over records of each numeric metric, `split_std` -> its standard deviation."""
    summary = {}
    for split in ("dev", "test"):
        if all(split in r for r in records):
            names = [name for name, value in records[0][split].items() if isinstance(value, (int, float))]
            values = {name: np.array([r[split][name] for r in records], dtype=float) for name in names}
            summary[split] = {name: float(v.mean()) for name, v in values.items()}
            summary[f"{split}_std"] = {name: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for name, v in values.items()}
    return summary


def _point_at(metrics: Path, final: Path) -> None:
    record = json.loads(metrics.read_text())
    record["config"]["out_dir"] = str(final)
    write_json_atomic(metrics, record)

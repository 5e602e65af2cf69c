"""Fine-tune several exported models in one process: the demo's last stage.

`tools/finetune.py` is one model, one task, one process; the demo fine-tunes six models on two tasks, and
a fresh process spends a good part of such a short run importing torch and transformers. One process for
all runs saves that eleven times over. Each run is still a plain `atb.finetune.finetune`
call with its own config, seed and output folder, exactly what `tools/finetune.py` would do with the
same flags.

Fine-tuning a tiny model whose pre-training was short sits on a plateau (train loss ln 2) before it
learns the task, and some seeds do not leave it within the demo's few hundred steps: the run ends at
the majority class, or near chance. As the BERT paper did for unstable fine-tuning, such a run is
restarted with the next seed, up to `restarts` times per run; the count goes into its metrics.json
(`restarts`) and the report marks it. The criterion only says that the run did not learn (no better than
the majority class on dev, or a mean training loss still at uniform guessing's), it does not pick the best
of several seeds, so the dev score is not selected upward.

    python -m atb.demo.finetune_models runs.json [claims/]   # a JSON list of FinetuneConfig fields (+ "restarts")

With a claims folder, several such processes share one list: each takes the next run nobody has claimed
(an exclusively created file per run), so a core never idles while another still has a queue.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from atb.demo.report import accuracy
from atb.finetune import FinetuneConfig, finetune
from atb.fsutil import write_json_atomic

# A run that learned anything ends with a mean training loss clearly below ln(labels); one that stayed on
# the plateau sits at it, whatever its dev accuracy happens to be.
PLATEAU_SHARE = 0.98


def did_not_learn(record: dict[str, Any]) -> bool:
    """Whether the run's dev accuracy is no better than always predicting the majority class, or its mean
    training loss stayed at that of guessing uniformly over the labels (classification, labels' loss only: a
    distilled run's loss also holds the soft targets' term, which has no such level)."""
    acc, majority = accuracy(record)
    if acc is not None and majority is not None and acc <= majority:
        return True
    if (record.get("config") or {}).get("teacher"):
        return False
    labels, loss = record.get("labels") or [], (record.get("train") or {}).get("loss")
    return len(labels) > 1 and loss is not None and loss >= PLATEAU_SHARE * math.log(len(labels))


def finetune_with_restarts(cfg: Any, restarts: int, finetune: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Run `finetune(cfg)`; while it did not learn and restarts remain, rerun with seed + 1."""
    record = finetune(cfg)
    done = 0
    while done < restarts and did_not_learn(record):
        done += 1
        print(f"  {Path(cfg.model).name} did not learn with seed {cfg.seed}: restart {done} of "
              f"{restarts} with seed {cfg.seed + 1}", flush=True)
        cfg = dataclasses.replace(cfg, seed=cfg.seed + 1, overwrite=True)
        record = finetune(cfg)
    if restarts:
        record = {**record, "restarts": done}
        write_json_atomic(Path(cfg.out_dir) / "metrics.json", record)
    return record


def claim(claims: Path | None, index: int) -> bool:
    """Whether this process takes run `index`: always without a claims folder, else if it is the first to."""
    if claims is None:
        return True
    try:
        os.close(os.open(claims / f"{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def main(spec_file: str, claims: str | None = None) -> None:
    runs = json.loads(Path(spec_file).read_text())
    for i, fields in enumerate(runs, 1):
        if not claim(Path(claims) if claims else None, i):
            continue
        fields = dict(fields)
        restarts = int(fields.pop("restarts", 0))
        cfg = FinetuneConfig(**fields)
        cfg.validate()
        started = time.perf_counter()
        record = finetune_with_restarts(cfg, restarts, finetune)
        score = ", ".join(f"{k} {v:.3f}" for k, v in record.get("dev", {}).items() if isinstance(v, float))
        _, majority = accuracy(record)
        base = f" (majority accuracy {majority:.3f})" if majority is not None else ""
        again = f" after {record['restarts']} restart(s)" if record.get("restarts") else ""
        print(f"[{i}/{len(runs)}] {record['task']} {Path(cfg.model).name}: dev {score}{base}{again} "
              f"in {time.perf_counter() - started:.0f} s -> {cfg.out_dir}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m atb.demo.finetune_models <runs.json> [<claims folder>]")
    main(*sys.argv[1:])

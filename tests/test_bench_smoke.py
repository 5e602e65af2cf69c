"""The SuperBert and export benchmarks run end to end (`--quick`: micro sizes) and end with a well-formed
`BENCH <name> ratio=<number>` line. Timings of a smoke run mean nothing, so no ratio is checked here;
the real figures are in bench/RESULTS.md."""

from __future__ import annotations

import math
import os
import re
import subprocess

import pytest

from conftest import PYTHON, REPO

BENCH_LINE = re.compile(r"BENCH (?P<name>[a-z_]+) ratio=(?P<ratio>\S+)")


@pytest.mark.parametrize("name, extra", [("superplm_overhead", []), ("superplm_overhead", ["--deepspeed"]),
                                         ("subnet_scaling", []), ("export_latency", []),
                                         pytest.param("ort_speedup", [], marks=pytest.mark.slow),
                                         pytest.param("finetune_grouping", [], marks=pytest.mark.slow)])
def test_bench_runs_and_prints_its_ratio_last(name, extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled"}
    proc = subprocess.run([PYTHON, str(REPO / "bench" / f"{name}.py"), "--quick", *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = BENCH_LINE.fullmatch(last)
    assert match is not None, f"last line is not a BENCH line: {last!r}"
    assert match["name"] == name
    ratio = float(match["ratio"])
    assert math.isfinite(ratio) and ratio > 0

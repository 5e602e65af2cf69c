"""ONNX Runtime (fp32 and int8) vs PyTorch eager fp32 on the same exported model (target: worst ORT fp32 /
torch <= 0.9), with int8 / ORT fp32 per arch.

    .venv/bin/python bench/ort_speedup.py            # 8 archs of the demo space, 1 thread, batch 1, seq 128
    .venv/bin/python bench/ort_speedup.py --quick    # smoke run (tiny space, seconds per arch)

Per arch: a freshly initialised exported folder (what extract/develop write; weights do not change the
work), exported with tools/export_onnx.py's code (model.onnx + model.int8.onnx), then its served model
(the encoder) timed by `atb.deploy.latency.measure_folder_latency` on torch, onnxruntime and
onnxruntime-int8: the latency tables' timing (thread CPU time, probe-normalised, >= 20 forwards and 0.2 s).
The three are measured in rounds, each round in a rotated order, and each figure is the median over
rounds, so a slow stretch of the shared machine does not land on one runtime.

The last line is `BENCH ort_speedup ratio=<worst over archs of ORT fp32 ms / PyTorch ms>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from _common import bench_line, machine_line
from atb.deploy.latency import measure_folder_latency
from atb.deploy.onnx_export import export_folder
from atb.deploy.runtime import RUNTIMES
from atb.latency.measure import MeasureSettings
from atb.latency.sampling import sample_archs
from atb.model.extract import default_model_config, new_masked_lm
from atb.space import SearchSpace


def exported_folder(arch, seq: int, vocab: int, root: Path) -> Path:
    folder = root / arch.name
    new_masked_lm(arch, default_model_config(seq, vocab)).save_pretrained(str(folder), safe_serialization=True)
    export_folder(folder, int8=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="demo")
    parser.add_argument("--n", type=int, default=8, help="archs (stratified; largest and smallest included)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny space, 2 archs, seq 16")
    args = parser.parse_args()
    vocab = 30522
    if args.quick:
        args.space, args.n, args.seq, args.rounds, vocab = "tiny", 2, 16, 1, 1000
    settings = MeasureSettings(seq=args.seq) if not args.quick else \
        MeasureSettings(seq=args.seq, warmup=1, repeats=3, min_time_s=0.0)
    archs = sample_archs(SearchSpace.load(args.space), args.n, seed=0)
    print(f"ort_speedup: {len(archs)} archs of {args.space}, threads 1, batch 1, seq {args.seq}, {args.rounds} "
          f"rounds; {machine_line()}", flush=True)
    print("| arch | torch ms | ORT fp32 ms | ORT int8 ms | ORT fp32 / torch | int8 / ORT fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    worst = (0.0, "")
    with tempfile.TemporaryDirectory(prefix="ort_speedup_") as tmp:
        for arch in archs:
            folder = exported_folder(arch, args.seq, vocab, Path(tmp))
            times: dict[str, list[float]] = {r: [] for r in RUNTIMES}
            for k in range(args.rounds):
                for runtime in RUNTIMES[k % 3:] + RUNTIMES[:k % 3]:
                    times[runtime].append(measure_folder_latency(folder, runtime, settings).median_ms)
            torch_ms, fp32_ms, int8_ms = (statistics.median(times[r]) for r in RUNTIMES)
            print(f"| {arch.name} | {torch_ms:.3f} | {fp32_ms:.3f} | {int8_ms:.3f} | {fp32_ms / torch_ms:.3f} | "
                  f"{int8_ms / fp32_ms:.3f} |", flush=True)
            worst = max(worst, (fp32_ms / torch_ms, arch.name))
    print(f"worst: {worst[1]} at {worst[0]:.3f}; after: {machine_line()}")
    print(bench_line("ort_speedup", worst[0]))


if __name__ == "__main__":
    sys.exit(main())

"""Latency predictor vs a linear least-squares baseline: held-out error on this machine (target: MAPE <= 5 %,
Kendall tau >= 0.9, better than linear), with the noise floor the figures should be read against.

    .venv/bin/python bench/latency_predictor.py                      # demo and mlm spaces, 80 archs each
    .venv/bin/python bench/latency_predictor.py --quick              # smoke run (tiny space, seconds)
    .venv/bin/python bench/latency_predictor.py --out_dir runs/lat   # keep (and resume) the tables
    .venv/bin/python bench/latency_predictor.py --runtime onnxruntime-int8   # the ORT int8 runtime
    .venv/bin/python bench/latency_predictor.py --small 14           # also fits on 14 archs of each table

Per space: measure N stratified archs (the paper's setting: CPU, 1 thread, batch 1, seq 128; the
exported model, probe-normalised thread CPU time, see atb/latency/measure.py), hold out 25 % (the space's
largest and smallest stay in training), fit the predictor and the linear baseline on the same training
rows, and score both on the held-out rows. Then the held-out archs are measured a second time: the
first-vs-second MAPE is the floor no predictor can be shown to beat, and the predictor is also scored
against that independent second measurement.

The last line is `BENCH latency_predictor ratio=<worst held-out MAPE of the predictor over the spaces,
as a fraction>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import bench_line, machine_line
from atb.latency.evaluation import fit_and_evaluate, format_metrics
from atb.latency.jobs import MeasureConfig, run_measure
from atb.latency.metrics import kendall_tau, mape
from atb.latency.plot import plot_fit
from atb.latency.predictor import FitOptions
from atb.latency.table import latencies


def small_table_mapes(rows: list[dict], size: int, splits: int) -> list[float]:
    """Held-out MAPE of predictors fitted on `size` rows drawn from the table, once per split seed: what a user
    who measures only a dozen archs would get."""
    mapes = []
    for split in range(splits):
        picked = np.random.default_rng(100 + split).choice(len(rows), size, replace=False)
        result = fit_and_evaluate([rows[i] for i in sorted(picked)], f"{size} rows", test_fraction=0.25, seed=split,
                                  options=FitOptions(seed=split))
        mapes.append(result.metrics["test"]["predictor"]["mape"])
    return mapes


def bench_space(space: str, n: int, seq: int, repeats: int, out_dir: Path, seed: int, retest: bool,
                runtime: str = "torch", small: int = 0) -> dict:
    print(f"\n== {space}: {n} archs, seq {seq}, batch 1, 1 thread, runtime {runtime}  [{machine_line()}]", flush=True)
    start = time.time()
    shared_machine = {"clock": "auto", "probe": True}  # opt in: this bench runs on a machine others use too
    stem = space if runtime == "torch" else f"{space}_{runtime}"
    measure = MeasureConfig(space=space, n=n, seed=seed, seq=seq, repeats=repeats, out=str(out_dir / f"{stem}.jsonl"),
                            runtime=runtime, **shared_machine)
    rows = run_measure(measure)
    measured_s = time.time() - start
    result = fit_and_evaluate(rows, measure.out, test_fraction=0.25, seed=seed, options=FitOptions(seed=seed))
    print(format_metrics(result.metrics))
    png = plot_fit(result, out_dir / f"{stem}_fit.png", f"{space} space, {runtime}, held-out archs in red")
    figures = {"space": space, "metrics": result.metrics, "measure_s": measured_s, "plot": png}
    if retest:
        test_archs = [result.archs[i] for i in result.test]
        second = run_measure(MeasureConfig(space=space, seq=seq, repeats=repeats, archs=[a.name for a in test_archs],
                                           out=str(out_dir / f"{stem}_retest.jsonl"), runtime=runtime,
                                           **shared_machine))
        first_rows = [rows[i] for i in result.test]
        _, both = latencies(first_rows + second)  # one probe scale for both passes
        first_ms, second_ms = np.array(both[:len(first_rows)]), np.array(both[len(first_rows):])
        predicted = result.predictor.predict(test_archs)
        figures["retest_mape"] = mape(second_ms, first_ms)
        figures["predictor_vs_retest_mape"] = mape(second_ms, predicted)
        figures["predictor_vs_mean_mape"] = mape((first_ms + second_ms) / 2, predicted)
        figures["retest_tau"] = kendall_tau(second_ms, first_ms)
        figures["predictor_vs_retest_tau"] = kendall_tau(second_ms, predicted)
        print(f"retest of the {len(test_archs)} held-out archs: first vs second measurement MAPE "
              f"{figures['retest_mape']:.2%}, tau {figures['retest_tau']:.3f} (the floor); predictor vs second "
              f"MAPE {figures['predictor_vs_retest_mape']:.2%}, tau {figures['predictor_vs_retest_tau']:.3f}; "
              f"vs the mean of both MAPE {figures['predictor_vs_mean_mape']:.2%}")
    if small:
        figures["small"] = small_table_mapes(rows, small, splits=6)
        print(f"{small} of the {len(rows)} archs, six draws: held-out MAPE "
              + " ".join(f"{m:.1%}" for m in figures["small"]))
    print(f"measured in {measured_s:.0f} s; plot {png}  [{machine_line()}]", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spaces", default="demo,mlm")
    parser.add_argument("--n", type=int, default=80, help="archs measured per space")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20, help="minimum timed forwards per arch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_retest", action="store_true", help="skip re-measuring the held-out archs")
    parser.add_argument("--out_dir", default=None, help="keep tables and plots here (re-running resumes)")
    parser.add_argument("--runtime", default="torch", help="torch, onnxruntime or onnxruntime-int8")
    parser.add_argument("--small", type=int, default=0,
                        help="also fit on this many archs drawn from each table (six draws)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny space, 16 archs, seq 32")
    args = parser.parse_args()
    if args.quick:
        args.spaces, args.n, args.seq, args.repeats = "tiny", 16, 32, 5
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="latency_bench_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [bench_space(s, args.n, args.seq, args.repeats, out_dir, args.seed, not args.no_retest, args.runtime,
                           args.small) for s in args.spaces.split(",")]

    print("\n| space | archs (train/test) | predictor MAPE | linear MAPE | predictor tau | linear tau | "
          "predictor R2 | linear R2 | retest MAPE | retest tau | spread of forwards |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m, p, lin = r["metrics"], r["metrics"]["test"]["predictor"], r["metrics"]["test"]["linear"]
        retest = (f"{r['retest_mape']:.2%} | {r['retest_tau']:.3f}" if "retest_mape" in r else "- | -")
        print(f"| {r['space']} | {m['n_train']}/{m['n_test']} | {p['mape']:.2%} | {lin['mape']:.2%} | "
              f"{p['kendall_tau']:.3f} | {lin['kendall_tau']:.3f} | {p['r2']:.4f} | {lin['r2']:.4f} | {retest} | "
              f"{m['noise']['median_relative_spread']:.1%} |")
    for r in results:
        if "small" in r:
            print(f"{r['space']}, {args.small} archs per fit: held-out MAPE median {np.median(r['small']):.2%}, "
                  f"worst {max(r['small']):.2%}")
    print(f"tables and plots: {out_dir}")
    worst = max(r["metrics"]["test"]["predictor"]["mape"] for r in results)
    print(bench_line("latency_predictor", worst))


if __name__ == "__main__":
    sys.exit(main())

"""The three latency jobs behind `tools/latency.py`: measure a table, fit a predictor, predict.

Each job is a typed config plus a `run_*` function that returns what it printed as data, so the bench
and tests drive exactly the code path the command line does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atb.deploy.runtime import check_same_runtime
from atb.latency.evaluation import check_usable, fit_and_evaluate, format_metrics
from atb.latency.measure import MeasureSettings, device_description, measure_latency
from atb.latency.predictor import FitOptions, LatencyPredictor
from atb.latency.sampling import sample_archs
from atb.latency.table import append_row, check_consistent, make_row, read_table
from atb.latency.targets import parse_target, reference_latency
from atb.model.extract import default_model_config
from atb.space import Arch, SearchSpace


@dataclass
class MeasureConfig:
    """Measure the latency of N sampled archs (or the given ones) into a JSONL table; re-running resumes."""

    space: str = "demo"  # preset name or spec file
    out: str = ""  # JSONL table; existing rows are kept and not re-measured
    n: int = 80  # archs to sample (stratified; largest and smallest always included)
    seed: int = 0  # of the arch sample
    archs: list[str] | None = None  # measure these (names like L4_H256_A4_Q256_F1024) instead of sampling
    device: str = "cpu"  # cpu or cuda
    threads: int = 1  # CPU threads (the paper: 1)
    batch: int = 1  # sequences per forward
    seq: int = 128  # tokens per sequence
    dtype: str = "float32"  # float32 | float16 | bfloat16
    clock: str = "wall"  # wall | cpu (thread CPU time, 1 thread only) | auto (cpu with 1 thread, else wall)
    probe: bool = False  # shared machines: normalise by a reference probe (its quiet time cached in ~/.cache/atb)
    warmup: int = 5  # untimed forwards before timing
    repeats: int = 20  # minimum timed forwards per arch
    min_time_s: float = 0.2  # fast archs repeat until this much time has been timed ...
    max_repeats: int = 500  # ... but never more than this many forwards
    vocab_size: int = 30522  # vocabulary of the timed models (counts in params, not in latency)
    progress: bool = True  # show a progress bar
    runtime: str = "torch"  # torch (eager), onnxruntime (fp32) or onnxruntime-int8: what serves the model

    def settings(self) -> MeasureSettings:
        return MeasureSettings(device=self.device, threads=self.threads, batch=self.batch, seq=self.seq,
                               dtype=self.dtype, clock=self.clock, probe=self.probe, warmup=self.warmup,
                               repeats=self.repeats, min_time_s=self.min_time_s, max_repeats=self.max_repeats,
                               runtime=self.runtime)


def run_measure(cfg: MeasureConfig) -> list[dict[str, Any]]:
    """All rows of the table after measuring whatever it was missing."""
    if not cfg.out:
        raise ValueError("--out is required (the JSONL latency table to write or resume)")
    space = SearchSpace.load(cfg.space)
    settings = cfg.settings()
    if cfg.archs:
        archs = [space.validate(Arch.parse(a)) for a in cfg.archs]
    else:
        archs = sample_archs(space, cfg.n, cfg.seed)
    out = Path(cfg.out)
    rows = read_table(out, allow_empty=True) if out.exists() else []
    if rows:
        check_consistent(rows, out, settings.identity(), space.to_spec(), device_description(settings)["name"])
    done = {r["arch_name"] for r in rows}
    missing = [a for a in archs if a.name not in done]
    print(f"latency table {out}: {len(archs) - len(missing)} of {len(archs)} archs already measured, "
          f"measuring {len(missing)} on {settings.device}/{settings.runtime} (threads={settings.threads}, batch={settings.batch}, "
          f"seq={settings.seq}, clock={settings.resolved_clock})")
    model_config = default_model_config(settings.seq, cfg.vocab_size)
    bar = _progress(missing, cfg.progress)
    for arch in bar:
        m = measure_latency(arch, model_config, settings)
        row = make_row(arch, space, settings, m, cfg.vocab_size)
        append_row(out, row)
        rows.append(row)
        if cfg.progress:
            bar.set_postfix_str(f"{arch.name} {m.median_ms:.2f} ms")
    return rows


def _progress(items: list, enabled: bool):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc="measuring", unit="arch")


@dataclass
class FitConfig:
    """Fit a latency predictor on a measured table; report held-out error against a linear baseline."""

    table: str = ""  # JSONL from `measure`
    out: str = ""  # predictor folder to write (predictor.safetensors + predictor.json + fit.png)
    test_fraction: float = 0.25  # rows held out to score the predictor
    seed: int = 0  # of the train/test split and the predictor's initialisation
    statistic: str = "median_ms"  # median_ms, p10_ms, min_ms or mean_ms of each row
    terms: int = 4  # power-law units per layer (see atb/latency/predictor.py)
    ridge: float | None = None  # None: chosen by cross-validation on the training rows
    ensemble: int = 3  # predictors averaged, each from another initialisation
    refit_all: bool = False  # save a predictor refitted on every row (metrics stay those of the split)
    accept_poor_fit: bool = False  # save it even when it misses the held-out archs by more than their latency
    plot: bool = True  # write fit.png (measured vs predicted)
    overwrite: bool = False  # replace an existing --out folder
    runtime: str = ""  # if given, the table must have been measured on this runtime


def run_fit(cfg: FitConfig) -> dict[str, Any]:
    if not cfg.table or not cfg.out:
        raise ValueError("--table and --out are required")
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise FileExistsError(f"predictor folder {cfg.out} already exists; choose another or pass --overwrite")
    rows = read_table(cfg.table)
    check_same_runtime(rows[0]["settings"]["runtime"], cfg.runtime, f"latency table {cfg.table}")
    options = FitOptions(terms=cfg.terms, ridge=cfg.ridge, ensemble=cfg.ensemble, seed=cfg.seed)
    result = fit_and_evaluate(rows, cfg.table, cfg.test_fraction, cfg.seed, cfg.statistic, options, cfg.refit_all)
    print(f"runtime {rows[0]['settings']['runtime']}: " + format_metrics(result.metrics))
    if not cfg.accept_poor_fit:
        check_usable(result.metrics, cfg.table)
    result.predictor.save(cfg.out, overwrite=cfg.overwrite)
    if cfg.plot:
        from atb.latency.plot import plot_fit

        settings = rows[0]["settings"]
        title = (f"{rows[0]['space'].get('name')} space, {rows[0]['device'].get('name')}, "
                 f"threads={settings.get('threads')}, batch={settings['batch']}, seq={settings['seq']}, "
                 f"{settings['runtime']}")
        png = plot_fit(result, Path(cfg.out) / "fit.png", title)
        if png:
            print(f"plot: {png}")
    print(f"predictor saved to {cfg.out}")
    return result.metrics


@dataclass
class PredictConfig:
    """Predicted latency of archs, and their speed-up over a reference arch."""

    predictor: str = ""  # folder written by `fit`
    archs: list[str] | None = None  # names like L4_H256_A4_Q256_F1024
    reference: str | None = None  # 'largest' (default), bert-base, or an arch name
    targets: list[str] | None = None  # also resolve latency targets such as 12ms or 4x
    allow_outside: bool = False  # predict archs outside the predictor's space (extrapolation)
    runtime: str = ""  # if given, the predictor must have been fitted on this runtime


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    if not cfg.predictor:
        raise ValueError("--predictor is required")
    if not cfg.archs and not cfg.targets:
        raise ValueError("nothing to do: give --archs and/or --targets")
    predictor = LatencyPredictor.load(cfg.predictor)
    check_same_runtime(predictor.runtime, cfg.runtime, f"latency predictor {cfg.predictor}")
    space = predictor.search_space()
    archs = [Arch.parse(a) for a in (cfg.archs or [])]
    if not cfg.allow_outside:
        for a in archs:
            space.validate(a)
    ref_arch, ref_ms = reference_latency(predictor, space, cfg.reference)
    predicted = predictor.predict(archs, warn_outside=False) if archs else []
    result: dict[str, Any] = {"reference": {"arch": ref_arch.name, "ms": ref_ms}, "archs": [], "targets": {}}
    print(f"reference {ref_arch.name}: {ref_ms:.3f} ms  ({predictor.device}/{predictor.runtime}, threads={predictor.threads}, "
          f"batch={predictor.batch}, seq={predictor.seq})")
    for arch, ms in zip(archs, predicted):
        result["archs"].append({"arch": arch.name, "ms": float(ms), "speedup": ref_ms / float(ms)})
        print(f"{arch.name:<28} {ms:9.3f} ms  {ref_ms / ms:6.2f}x")
    for text in cfg.targets or []:
        ms = parse_target(text, predictor, space, cfg.reference)
        result["targets"][text] = ms
        print(f"target {text!r} = {ms:.3f} ms")
    return result

"""Fit a predictor on part of a latency table and say how wrong it is on the rest.

The split is random but keeps the space's largest and smallest archs in training (they bound the range;
holding one out would test extrapolation, not the interpolation the search relies on). The linear
baseline is fitted on exactly the same training rows, so the two reports are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atb.latency.metrics import noise_floor, report
from atb.latency.features import arch_flops, arch_params
from atb.latency.predictor import FitOptions, LatencyPredictor, zscore_stats
from atb.latency.table import check_consistent, latencies
from atb.space import Arch, SearchSpace

MAX_MAPE = 1.0  # a held-out error above the latency itself: the predictor is refused


def least_squares(x: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> tuple[np.ndarray, float]:
    """w, b minimising |x w + b - y|² (tiny ridge: a field such as heads may be constant in a space)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    gram = design.T @ design + ridge * np.eye(design.shape[1])
    coef = np.linalg.solve(gram, design.T @ y)
    return coef[:-1], float(coef[-1])


class LinearBaseline:
    """Ordinary least squares of milliseconds on the z-scored arch fields, FLOPs and parameter count."""

    def __init__(self, batch: int, seq: int):
        self.batch, self.seq = batch, seq

    def _x(self, archs: list[Arch]) -> np.ndarray:
        return np.array([[a.layers, a.hidden, a.heads, a.qkv, a.ffn, arch_flops(a, self.batch, self.seq),
                          arch_params(a)] for a in archs], float)

    def fit(self, archs: list[Arch], latencies_ms: np.ndarray) -> "LinearBaseline":
        x = self._x(archs)
        self.mean, self.std = zscore_stats(x)
        self.w, self.b = least_squares((x - self.mean) / self.std, np.asarray(latencies_ms, float))
        return self

    def predict(self, archs: list[Arch]) -> np.ndarray:
        return ((self._x(archs) - self.mean) / self.std) @ self.w + self.b


@dataclass
class FitResult:
    predictor: LatencyPredictor
    baseline: LinearBaseline
    train: list[int]
    test: list[int]
    archs: list[Arch]
    measured: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)

    def predicted(self, which: str, idx: list[int]) -> np.ndarray:
        model = self.predictor if which == "predictor" else self.baseline
        return np.asarray(model.predict([self.archs[i] for i in idx]), float)


def split_indices(archs: list[Arch], space: SearchSpace, test_fraction: float, seed: int
                  ) -> tuple[list[int], list[int]]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    pinned = {space.largest(), space.smallest()}
    free = [i for i, a in enumerate(archs) if a not in pinned]
    n_test = int(round(len(archs) * test_fraction))
    if n_test < 2 or len(archs) - n_test < 3:
        raise ValueError(f"a latency table of {len(archs)} archs is too small to hold out {test_fraction:.0%} "
                         f"for testing (need >= 2 test and >= 3 training archs); measure more archs")
    rng = np.random.default_rng(seed)
    test = sorted(int(i) for i in rng.choice(free, size=min(n_test, len(free)), replace=False))
    held_out = set(test)
    train = [i for i in range(len(archs)) if i not in held_out]
    return train, test


def fit_and_evaluate(rows: list[dict[str, Any]], table_name: str = "table", test_fraction: float = 0.25,
                     seed: int = 0, statistic: str = "median_ms", options: FitOptions | None = None,
                     refit_all: bool = False) -> FitResult:
    if not rows:
        raise ValueError(f"latency table {table_name} is empty: nothing to fit")
    check_consistent(rows, table_name)
    space = SearchSpace.from_spec(rows[0]["space"])
    archs, values = latencies(rows, statistic)
    if len(set(archs)) != len(archs):
        raise ValueError(f"latency table {table_name} lists an arch twice; it was not written by `latency measure`")
    for a in archs:
        space.validate(a)
    measured = np.asarray(values, float)
    train, test = split_indices(archs, space, test_fraction, seed)
    settings = rows[0]["settings"]
    train_archs = [archs[i] for i in train]
    predictor = LatencyPredictor.fit(train_archs, measured[train], space.to_spec(), settings, rows[0]["device"],
                                     options, statistic=statistic)
    baseline = LinearBaseline(settings["batch"], settings["seq"]).fit(train_archs, measured[train])
    result = FitResult(predictor, baseline, train, test, archs, measured)
    result.metrics = {
        "n_train": len(train), "n_test": len(test), "split_seed": seed, "statistic": statistic,
        "test": {"predictor": report(measured[test], result.predicted("predictor", test)),
                 "linear": report(measured[test], result.predicted("linear", test))},
        "train": {"predictor": report(measured[train], result.predicted("predictor", train)),
                  "linear": report(measured[train], result.predicted("linear", train))},
        "noise": noise_floor(rows),
        "ridge": predictor.ridge,
        "refit_on_all": refit_all,
    }
    if refit_all:  # the saved model sees every row; the metrics above are those of its held-out twin
        result.predictor = LatencyPredictor.fit(archs, measured, space.to_spec(), settings, rows[0]["device"],
                                                options, statistic=statistic)
    result.predictor.metrics = result.metrics
    return result


def check_usable(metrics: dict[str, Any], table_name: str) -> None:
    """Refuse a predictor that misses its own held-out archs by more than their latency (MAPE > 100 %): it
    cannot place an arch in a latency band, and saved, it would only move the failure into the search (a few
    noisy training archs can leave a term unpinned, and a small arch then comes out slower than the largest)."""
    predictor, linear = metrics["test"]["predictor"], metrics["test"]["linear"]
    if predictor["mape"] > MAX_MAPE:
        raise ValueError(f"the predictor fitted on {metrics['n_train']} archs of {table_name} misses the "
                         f"{metrics['n_test']} held-out archs by {predictor['mape']:.0%} on average (the linear fit: "
                         f"{linear['mape']:.0%}): the table is too small or too noisy for this space; measure more "
                         "archs (tools/latency.py measure --n) and fit again, or pass --accept_poor_fit true. "
                         "Nothing was written")


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small table for the terminal and the bench."""
    lines = [f"held-out archs: {metrics['n_test']} (trained on {metrics['n_train']}; ridge {metrics['ridge']:g})",
             f"{'model':<10} {'MAPE':>7} {'RMSE ms':>9} {'R2':>7} {'tau':>6}"]
    for name in ("predictor", "linear"):
        m = metrics["test"][name]
        lines.append(f"{name:<10} {m['mape']:>7.2%} {m['rmse_ms']:>9.3f} {m['r2']:>7.4f} {m['kendall_tau']:>6.3f}")
    noise = metrics["noise"]
    lines.append(f"noise floor: single forwards spread (p90-p10)/median = {noise['median_relative_spread']:.1%}, "
                 f"standard error of a median ~ {noise['median_standard_error']:.2%}")
    return "\n".join(lines)

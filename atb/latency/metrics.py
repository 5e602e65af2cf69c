"""How good a latency predictor is, and how good it could possibly be.

MAPE is the number a user feels ("the 12 ms model ran in 12.6 ms"); Kendall tau is what the search feels
(does the predictor order archs correctly). The noise floor says how far two honest measurements of the
same arch disagree: a predictor cannot be judged more precisely than that.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def mape(measured: np.ndarray, predicted: np.ndarray) -> float:
    """Mean absolute percentage error, as a fraction (0.05 = 5 %)."""
    measured, predicted = np.asarray(measured, float), np.asarray(predicted, float)
    return float(np.mean(np.abs(predicted - measured) / measured))


def rmse(measured: np.ndarray, predicted: np.ndarray) -> float:
    measured, predicted = np.asarray(measured, float), np.asarray(predicted, float)
    return float(np.sqrt(np.mean((predicted - measured) ** 2)))


def r2(measured: np.ndarray, predicted: np.ndarray) -> float:
    measured, predicted = np.asarray(measured, float), np.asarray(predicted, float)
    total = np.sum((measured - measured.mean()) ** 2)
    return float(1.0 - np.sum((predicted - measured) ** 2) / total) if total > 0 else float("nan")


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b (ties handled), O(n²): tables hold hundreds of archs at most."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    concordance = float(np.sum(da * db))
    pairs_a, pairs_b = float(np.sum(da != 0)), float(np.sum(db != 0))
    if pairs_a == 0 or pairs_b == 0:
        return float("nan")
    return concordance / np.sqrt(pairs_a * pairs_b)


def report(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {"mape": mape(measured, predicted), "rmse_ms": rmse(measured, predicted),
            "r2": r2(measured, predicted), "kendall_tau": kendall_tau(measured, predicted)}


def noise_floor(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Spread of single forwards around their median, per arch, summarised over the table.

    `median_relative_spread` = median over archs of (p90 - p10) / median. The half-width of that band
    divided by sqrt(repeats) bounds how well one median is known from its own repeats
    (`median_standard_error`, a normal approximation); slow drift of the machine between archs is not in
    it, which is why the bench also re-measures held-out archs (`retest_mape`).
    """
    spread = np.array([(r["p90_ms"] - r["p10_ms"]) / r["median_ms"] for r in rows], float)
    stderr = np.array([(r["p90_ms"] - r["p10_ms"]) / (2 * 1.2816) * 1.2533 / np.sqrt(r["repeats"]) / r["median_ms"]
                       for r in rows], float)
    loads = [r["other_load"] for r in rows if r.get("other_load") is not None]
    return {"median_relative_spread": float(np.median(spread)),
            "median_standard_error": float(np.median(stderr)),
            "max_other_load": float(max(loads)) if loads else float("nan")}


def retest_mape(first: dict[str, float], second: dict[str, float]) -> float:
    """MAPE between two measurements of the same archs (keyed by arch name), second taken as truth."""
    common = sorted(set(first) & set(second))
    if not common:
        raise ValueError("no arch was measured twice: cannot compute a retest error")
    return mape(np.array([second[k] for k in common]), np.array([first[k] for k in common]))

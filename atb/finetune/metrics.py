"""Downstream metrics, written out so they carry no dependency beyond numpy (the `evaluate` library is
not a dependency) and so their definitions are visible: GLUE's accuracy / F1 / Matthews correlation /
Pearson / Spearman, and SQuAD v1.1's exact match and token F1 with the official answer normalisation.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

import numpy as np


def accuracy(labels: Sequence[int], preds: Sequence[int]) -> float:
    labels, preds = _paired(labels, preds)
    return float((labels == preds).mean())


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_labels: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    labels, preds = _paired(labels, preds)
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (labels, preds), 1)
    return matrix


def f1_per_class(labels: Sequence[int], preds: Sequence[int], num_labels: int) -> np.ndarray:
    """F1 of each class; a class never predicted nor present scores 0 (the usual convention)."""
    matrix = confusion_matrix(labels, preds, num_labels)
    tp = np.diag(matrix).astype(np.float64)
    denom = matrix.sum(axis=0) + matrix.sum(axis=1)  # predicted + actual = 2tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def f1_binary(labels: Sequence[int], preds: Sequence[int], positive: int = 1) -> float:
    """GLUE's F1 for MRPC/QQP: F1 of the positive class."""
    return float(f1_per_class(labels, preds, max(2, positive + 1))[positive])


def f1_macro(labels: Sequence[int], preds: Sequence[int], num_labels: int) -> float:
    return float(f1_per_class(labels, preds, num_labels).mean())


def matthews_corrcoef(labels: Sequence[int], preds: Sequence[int], num_labels: int) -> float:
    """Multi-class MCC (Gorodkin's R_K), which equals the binary phi coefficient for two classes.

    Defined as 0 when either the labels or the predictions are constant (the denominator vanishes),
    which is what a majority-class predictor scores.
    """
    matrix = confusion_matrix(labels, preds, num_labels).astype(np.float64)
    n = matrix.sum()
    correct = np.trace(matrix)
    pred_totals, true_totals = matrix.sum(axis=0), matrix.sum(axis=1)
    cov_ytyp = correct * n - pred_totals @ true_totals
    cov_ypyp = n * n - pred_totals @ pred_totals
    cov_ytyt = n * n - true_totals @ true_totals
    denom = np.sqrt(cov_ypyp * cov_ytyt)
    return float(cov_ytyp / denom) if denom > 0 else 0.0


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; 0 when either side is constant (no linear relation can be measured)."""
    x, y = _paired(x, y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / denom) if denom > 0 else 0.0


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties given their average rank (as Spearman's rho needs)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, then the mean rank of the run for each of its members.
    run_starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    run_ends = np.r_[run_starts[1:], len(values)]
    run_mean_rank = (run_starts + run_ends + 1) / 2.0
    run_of_sorted = np.repeat(np.arange(len(run_starts)), run_ends - run_starts)
    result = np.empty(len(values), dtype=np.float64)
    result[order] = run_mean_rank[run_of_sorted]
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = _paired(x, y, dtype=np.float64)
    return pearson(ranks(x), ranks(y))


def classification_metrics(labels: Sequence[int], preds: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy, F1 and MCC; `f1` is the positive-class F1 for two labels, macro F1 otherwise."""
    result = {
        "accuracy": accuracy(labels, preds),
        "f1_macro": f1_macro(labels, preds, num_labels),
        "mcc": matthews_corrcoef(labels, preds, num_labels),
    }
    result["f1"] = f1_binary(labels, preds) if num_labels == 2 else result["f1_macro"]
    return result


def regression_metrics(labels: Sequence[float], preds: Sequence[float]) -> dict[str, float]:
    labels_a, preds_a = _paired(labels, preds, dtype=np.float64)
    return {
        "pearson": pearson(labels_a, preds_a),
        "spearman": spearman(labels_a, preds_a),
        "mse": float(((labels_a - preds_a) ** 2).mean()),
    }


def majority_class(train_labels: Iterable[int]) -> int:
    """The most frequent training label; ties go to the smallest id so the baseline is deterministic."""
    counts = collections.Counter(train_labels)
    if not counts:
        raise ValueError("no training labels to take a majority class from")
    return min(counts, key=lambda label: (-counts[label], label))


# --- SQuAD v1.1 -----------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: dict[str, str], gold_answers: dict[str, list[str]]) -> dict[str, float]:
    """EM and F1 in percent, each the best over a question's gold answers, averaged over questions.

    A question without a prediction scores 0, as in the official script.
    """
    if not gold_answers:
        raise ValueError("no questions to score")
    exact = f1 = 0.0
    for qid, answers in gold_answers.items():
        if not answers:
            raise ValueError(f"question {qid!r} has no gold answer; SQuAD v1.1 scoring needs at least one")
        prediction = predictions.get(qid)
        if prediction is None:
            continue
        exact += max(squad_exact(prediction, a) for a in answers)
        f1 += max(squad_f1(prediction, a) for a in answers)
    n = len(gold_answers)
    return {"exact_match": 100.0 * exact / n, "f1": 100.0 * f1 / n}


def _paired(a: Sequence, b: Sequence, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = np.asarray(a, dtype=dtype).reshape(-1), np.asarray(b, dtype=dtype).reshape(-1)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"labels and predictions differ in length: {a_arr.size} vs {b_arr.size}")
    if a_arr.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    return a_arr, b_arr

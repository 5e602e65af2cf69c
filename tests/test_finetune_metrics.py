"""Fine-tuning's metric functions against hand-computed values (and scipy), and QA span extraction on
hand-made logits: the numbers every fine-tuning report rests on."""

from __future__ import annotations

import numpy as np
import pytest

from atb.finetune import metrics, qa


# --- metrics against hand-computed references ------------------------------------------------------------

def test_classification_metrics_by_hand():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    preds = [1, 1, 0, 0, 0, 1, 0, 1]  # tp 3, fn 1, tn 3, fp 1
    assert metrics.accuracy(labels, preds) == pytest.approx(6 / 8)
    assert metrics.f1_binary(labels, preds) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics.matthews_corrcoef(labels, preds, 2) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))
    # Three classes: per-class F1 = 2tp / (predicted + actual).
    labels3, preds3 = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    f1s = [2 * 1 / (2 + 2), 2 * 2 / (3 + 2), 2 * 1 / (1 + 2)]
    assert metrics.f1_macro(labels3, preds3, 3) == pytest.approx(np.mean(f1s))
    # Gorodkin's R_K from the confusion matrix [[1,1,0],[0,2,0],[1,0,1]]: c=4, s=6, p=(2,3,1), t=(2,2,2).
    expected = (4 * 6 - (2 * 2 + 3 * 2 + 1 * 2)) / np.sqrt((36 - (4 + 9 + 1)) * (36 - (4 + 4 + 4)))
    assert metrics.matthews_corrcoef(labels3, preds3, 3) == pytest.approx(expected)
    assert metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1], 2) == 0.0  # constant predictions
    result = metrics.classification_metrics(labels3, preds3, 3)
    assert result["f1"] == result["f1_macro"]
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1], [0])


def test_correlations_by_hand_and_against_scipy():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]
    xc, yc = np.array(x) - 2.5, np.array(y) - 5.0
    assert metrics.pearson(x, y) == pytest.approx((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)))
    assert metrics.ranks([10, 20, 20, 5]) == pytest.approx([2, 3.5, 3.5, 1])  # ties share their mean rank
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert metrics.spearman(x, np.exp(y)) == pytest.approx(1.0)  # monotone, not linear
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)  # many ties in a
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic)


def test_squad_metrics_by_hand():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.squad_exact("the Eiffel Tower.", "Eiffel Tower") == 1.0
    assert metrics.squad_f1("the big red dog", "red dog") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert metrics.squad_f1("cat", "red dog") == 0.0
    scores = metrics.squad_metrics({"a": "red dog", "b": "blue"},
                                   {"a": ["a dog", "Red dog"], "b": ["green"], "c": ["x"]})
    assert scores["exact_match"] == pytest.approx(100 / 3)  # a exact; b wrong; c unanswered counts 0
    assert scores["f1"] == pytest.approx(100 / 3)
    assert metrics.majority_class([1, 0, 1, 2, 0]) == 0  # tie between 0 and 1 goes to the smaller id


# --- span extraction on hand-made logits ------------------------------------------------------------------

def test_best_span_stays_in_the_context_and_within_max_length():
    context = "Paris is big. Zürich is small."
    # [CLS] q q [SEP] paris is big . zürich is small . [SEP] (pad)
    offsets = [None, None, None, None, (0, 5), (6, 8), (9, 12), (12, 13), (14, 20), (21, 23), (24, 29),
               (29, 30), None]
    start = np.array([9, 9, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 9, 50.0])  # CLS/question/[SEP]/padding score high
    end = np.array([9, 9, 0, 0, 0, 0, 0, 0, 4, 0, 6, 0, 9, 50.0])
    score, s, e = qa.best_span(start, end, offsets, max_answer_len=30)
    assert context[s:e] == "Zürich is small" and score == pytest.approx(11.0)
    score, s, e = qa.best_span(start, end, offsets, max_answer_len=1)  # single token spans only
    assert context[s:e] == "Zürich" and score == pytest.approx(9.0)
    end_before_start = np.array([0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0])
    assert context[slice(*qa.best_span(start, end_before_start, offsets, 30)[1:])] == "Paris"  # not 'Zürich'..'Paris'
    assert qa.best_span(start, end, [None] * 13, 30) is None


def test_predict_answers_takes_the_best_window_per_example():
    from datasets import Dataset

    examples = Dataset.from_dict({"id": ["q1", "q2"], "context": ["alpha beta gamma", "delta"],
                                  "answers": [{"text": ["gamma"], "answer_start": [11]}] * 2})
    features = Dataset.from_dict({
        "example_id": ["q1", "q1", "q2"],
        "offset_mapping": [[None, [0, 5], [6, 10]], [None, [6, 10], [11, 16]], [None, None, None]],
    })
    start = np.array([[0, 1, 2, -100], [0, 0, 5, -100], [9, 9, 9, -100]], dtype=np.float32)  # -100: batch padding
    end = np.array([[0, 1, 2, -100], [0, 0, 5, -100], [9, 9, 9, -100]], dtype=np.float32)
    answers = qa.predict_answers(examples, features, start, end, max_answer_len=10)
    assert answers == {"q1": "gamma", "q2": ""}
    assert qa.score(examples, answers)["exact_match"] == pytest.approx(50.0)

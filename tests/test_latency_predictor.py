"""The latency predictor: what it learns of a known cost function from many or a dozen noisy archs, its files,
its metrics, and the fit it refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
from latency_synthetic import synthetic_ms, synthetic_rows

from atb.latency import LatencyPredictor, sample_archs
from atb.latency.evaluation import fit_and_evaluate
from atb.latency.metrics import kendall_tau, mape
from atb.latency.predictor import FitOptions
from atb.space import SearchSpace

FAST_FIT = FitOptions(ensemble=2, ridge=1e-3)


@pytest.mark.parametrize("space_name", ["demo", "mlm"])
def test_predictor_learns_a_known_latency_function(space_name):
    space = SearchSpace.load(space_name)
    archs = sample_archs(space, 80, seed=1)
    result = fit_and_evaluate(synthetic_rows(space, archs), space_name, test_fraction=0.25, seed=0,
                              options=FAST_FIT)
    test = result.metrics["test"]
    assert test["predictor"]["mape"] < 0.02, test
    assert test["predictor"]["kendall_tau"] > 0.95, test
    assert test["predictor"]["mape"] < test["linear"]["mape"]
    # unseen archs beyond the table: still within a few percent of the true function
    fresh = sample_archs(space, 20, seed=99)
    truth = np.array([synthetic_ms(a) for a in fresh])
    assert mape(truth, result.predictor.predict(fresh)) < 0.05


@pytest.mark.parametrize("space_name", ["demo", "mlm"])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_dozen_noisy_archs_give_a_predictor_that_stays_near_the_truth_over_the_space(space_name, seed):
    """What a quick `latency measure --n 12` on a busy machine gives: the fit must follow the cost laws between
    and beyond the archs it saw, not interpolate their noise."""
    space = SearchSpace.load(space_name)
    rows = synthetic_rows(space, sample_archs(space, 12, seed=seed), noise=0.1, seed=seed)
    result = fit_and_evaluate(rows, "small", test_fraction=0.25, seed=seed, options=FitOptions(ensemble=1))
    fresh = sample_archs(space, 200, seed=99)
    relative = result.predictor.predict(fresh) / np.array([synthetic_ms(a) for a in fresh])
    assert 0.5 < relative.min() and relative.max() < 2.0, (relative.min(), relative.max())
    assert mape(np.ones_like(relative), relative) < 0.15


def test_predictor_round_trips_through_safetensors_and_json(tmp_path):
    space = SearchSpace.load("demo")
    rows = synthetic_rows(space, sample_archs(space, 24, seed=2))
    result = fit_and_evaluate(rows, "t", options=FitOptions(lbfgs_iters=20, ensemble=2, ridge=1e-3))
    folder = result.predictor.save(tmp_path / "pred")
    assert sorted(p.name for p in folder.iterdir()) == ["predictor.json", "predictor.safetensors"]
    loaded = LatencyPredictor.load(folder)
    archs = sample_archs(space, 10, seed=3)
    np.testing.assert_allclose(loaded.predict(archs), result.predictor.predict(archs), rtol=1e-12)
    assert (loaded.device, loaded.threads, loaded.batch, loaded.seq) == ("cpu", 1, 1, 128)
    assert loaded.search_space() == space
    meta = json.loads((folder / "predictor.json").read_text())
    assert meta["metrics"]["test"]["predictor"]["mape"] == result.metrics["test"]["predictor"]["mape"]
    with pytest.raises(FileExistsError):
        result.predictor.save(folder)
    with pytest.raises(FileNotFoundError, match="latency predictor not found"):
        LatencyPredictor.load(tmp_path / "missing")


def test_metrics_against_hand_computed_values():
    assert mape(np.array([10.0, 20.0]), np.array([11.0, 18.0])) == pytest.approx(0.1)
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    # 6 pairs, one discordant (3,4 swapped): (5 - 1) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 8, 40), rng.normal(size=40)  # ties in a: tau-b
    assert kendall_tau(a, b) == pytest.approx(scipy_stats.kendalltau(a, b)[0])


def test_a_predictor_that_misses_its_held_out_archs_by_more_than_their_latency_is_refused():
    """MAPE above 100 % on the held-out archs: refused, with the linear fit's figure beside it; a mediocre but
    usable fit (a few noisy archs) is kept."""
    from atb.latency.evaluation import check_usable

    def metrics(mape, linear_mape=0.3):
        return {"n_train": 9, "n_test": 3, "test": {"predictor": {"r2": -1.0, "mape": mape},
                                                    "linear": {"r2": 0.5, "mape": linear_mape}}}

    with pytest.raises(ValueError, match=r"misses the 3 held-out archs by 3104194% on average \(the linear fit: 28%\)"):
        check_usable(metrics(31041.94, 0.28), "t.jsonl")
    check_usable(metrics(0.35), "t.jsonl")
    check_usable(metrics(0.99, 0.1), "t.jsonl")

"""The shared A-vs-B timer of the benches: who goes first in which round, how many rounds a time budget
buys, and the paired ratio. A fake clock that each call advances stands in for real time."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import _common  # noqa: E402


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_common.time, "perf_counter", fake)
    return fake


def calls_taking(clock: FakeClock, log: list[str], name: str, seconds: list[float]):
    durations = iter(seconds)

    def call() -> None:
        log.append(name)
        clock.now += next(durations)
    return call


def test_rounds_alternate_who_goes_first_and_stop_at_repeats(clock):
    log: list[str] = []
    a = calls_taking(clock, log, "a", [1.0] * 4)
    b = calls_taking(clock, log, "b", [2.0] * 4)
    result = _common.compare(a, b, repeats=3, warmup=1)
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert result.a.values == (1.0, 1.0, 1.0) and result.b.values == (2.0, 2.0, 2.0)


def test_a_time_budget_adds_rounds_in_pairs(clock):
    log: list[str] = []
    a = calls_taking(clock, log, "a", [1.0] * 20)
    b = calls_taking(clock, log, "b", [1.0] * 20)
    result = _common.compare(a, b, repeats=1, warmup=0, min_seconds=10.0)
    # 2 s a round: the budget is spent after 5 rounds, and a 6th evens out who went first
    assert len(result.a.values) == len(result.b.values) == 6
    assert log[0::2].count("a") == 3 and log[0::2].count("b") == 3


def test_paired_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians():
    # the machine is slow in rounds 2-3: the separate medians land in different states, the pairs do not
    a = _common.Samples((1.0, 2.2, 2.2, 1.0, 1.0))
    b = _common.Samples((1.0, 2.0, 2.0, 2.0, 1.0))
    result = _common.Comparison(a, b)
    assert result.paired == pytest.approx((1.0, 1.1, 1.1, 0.5, 1.0))
    assert result.paired_ratio == pytest.approx(1.0)
    assert result.ratio == pytest.approx(0.5)

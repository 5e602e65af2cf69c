"""Latency targets and the predictor that places archs relative to them.

Every constraint check of the search goes through `LatencyOracle`, which memoises predictions: the search
asks about the same arch many times (mutation retries, several targets, resume) and a predictor may be an
MLP or a fitted model that is cheap per batch but not per call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from atb.deploy.runtime import check_same_runtime
from atb.latency.features import arch_flops
from atb.latency.predictor import LatencyPredictor
from atb.latency.targets import Predictor, parse_target
from atb.search.settings import Band
from atb.space import Arch, SearchSpace


@dataclass(frozen=True)
class Target:
    label: str  # as the user wrote it ("12ms", "4x"), also the key of this target in state and results
    ms: float  # the target in predictor units
    low: float  # band bounds in predictor units
    high: float

    def contains(self, latency: float) -> bool:
        return self.low <= latency <= self.high

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.label, "target_ms": self.ms, "band_ms": [self.low, self.high]}


class LatencyOracle:
    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self._memo: dict[Arch, float] = {}

    def of(self, archs: Iterable[Arch]) -> list[float]:
        archs = list(archs)
        unknown = list(dict.fromkeys(a for a in archs if a not in self._memo))
        if unknown:
            predicted = np.asarray(self.predictor.predict(unknown), dtype=float).reshape(-1)
            if predicted.shape[0] != len(unknown):
                raise ValueError(f"latency predictor returned {predicted.shape[0]} values for {len(unknown)} archs")
            if not np.all(np.isfinite(predicted)):
                raise ValueError("latency predictor returned non-finite latencies")
            self._memo.update(zip(unknown, predicted.tolist()))
        return [self._memo[a] for a in archs]

    def one(self, arch: Arch) -> float:
        return self.of([arch])[0]


class FlopsProxy:
    """Predicted 'latency' = GFLOPs of one sequence's encoder forward. For spaces without a measured
    latency table (tests, first experiments); targets are then relative ("4x" = a quarter of the largest
    arch's FLOPs) or plain GFLOP budgets, since milliseconds mean nothing to it."""

    units = "GFLOP"

    def __init__(self, seq_len: int = 128):
        self.seq_len = seq_len

    def predict(self, archs: list[Arch]) -> np.ndarray:
        return np.array([arch_flops(a, batch=1, seq=self.seq_len) / 1e9 for a in archs])


def load_predictor(spec: str, seq_len: int, runtime: str = "") -> Predictor:
    """`flops` (the proxy above) or a saved atb latency predictor; with `runtime`, one measured on it."""
    if spec == "flops":
        if runtime:
            raise ValueError(f"--runtime {runtime} needs a latency predictor measured on it, not the FLOPs proxy")
        return FlopsProxy(seq_len)
    predictor = LatencyPredictor.load(spec)
    check_same_runtime(predictor.runtime, runtime, f"latency predictor {spec}")
    return predictor


def resolve_targets(texts: list[str], predictor: Predictor, space: SearchSpace, band: Band,
                    oracle: LatencyOracle) -> list[Target]:
    """Targets with their bands; a band the space cannot reach is an error now, not an endless search."""
    if not texts:
        raise ValueError("--targets is empty: give at least one latency target, e.g. --targets 4x,8x")
    band.validate()
    if len(set(texts)) != len(texts):
        raise ValueError(f"--targets lists a target twice: {texts}")
    fastest, slowest = oracle.of([space.smallest(), space.largest()])
    targets = []
    for text in texts:
        ms = parse_target(text, predictor, space)
        if ms <= 0:
            raise ValueError(f"target {text!r} resolves to {ms} (must be positive)")
        target = Target(text, ms, band.low * ms, band.high * ms)
        if target.high < fastest or target.low > slowest:
            raise ValueError(
                f"target {text!r}: band [{target.low:.4g}, {target.high:.4g}] misses the space "
                f"'{space.name}', whose predicted latencies span [{fastest:.4g}, {slowest:.4g}] "
                f"(smallest {space.smallest().name}, largest {space.largest().name})")
        targets.append(target)
    return targets

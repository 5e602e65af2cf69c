"""A known latency function over archs, and latency-table rows made from it, for the latency tests."""

from __future__ import annotations

import numpy as np

from atb.latency import MeasureSettings
from atb.latency.measure import summarize
from atb.latency.table import make_row
from atb.space import Arch, SearchSpace


def synthetic_ms(a: Arch, seq: int = 128) -> float:
    """A BERT-like cost: fixed and per-layer overheads, a seq² attention term, and GEMMs whose efficiency
    grows with the matrix width (small matrices run below peak), which no linear model captures."""
    efficiency = a.hidden / (a.hidden + 96)
    gemm = seq * a.hidden * (4 * a.qkv + 2 * a.ffn) * 1e-8 / efficiency
    attention = 2 * seq * seq * a.qkv * 3e-8
    return 0.3 + a.layers * (0.05 + 0.002 * a.heads + gemm + attention)


def synthetic_rows(space: SearchSpace, archs: list[Arch], noise: float = 0.0, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    settings = MeasureSettings(probe=False)
    rows = []
    for a in archs:
        v = synthetic_ms(a) * (1 + noise * rng.standard_normal())
        rows.append(make_row(a, space, settings, summarize([v * 0.98, v, v * 1.02]), 30522))
    return rows

"""Latency targets as users write them: absolute ("12ms", "12.5 ms", or a bare 12 in the predictor's units)
or a speed-up ("4x") over a reference.

The reference of a speed-up is the space's largest arch unless named: "bert-base" and friends are the
usual yardsticks of the distillation literature, even though they lie outside most spaces (BERT-base has
12 layers; the paper's spaces stop at 8). Predicting them extrapolates, so that is allowed with a warning.
"""

from __future__ import annotations

import re
import warnings
from typing import Protocol

import numpy as np

from atb.space import Arch, SearchSpace

REFERENCE_ARCHS = {
    "bert-base": Arch(12, 768, 12, 768, 3072),
    "bert-large": Arch(24, 1024, 16, 1024, 4096),
    "bert-medium": Arch(8, 512, 8, 512, 2048),
    "bert-small": Arch(4, 512, 8, 512, 2048),
    "bert-mini": Arch(4, 256, 4, 256, 1024),
    "bert-tiny": Arch(2, 128, 2, 128, 512),
}
LARGEST = "largest"

_TARGET = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)\s*(ms|x)?\s*$", re.IGNORECASE)


class Predictor(Protocol):
    units: str  # "ms", or what a proxy without milliseconds predicts (e.g. "GFLOP")

    def predict(self, archs: list[Arch]) -> np.ndarray: ...


def reference_arch(space: SearchSpace, reference: str | Arch | None = None) -> Arch:
    """None or 'largest': the space's largest arch; a name from REFERENCE_ARCHS; or any arch name/JSON."""
    if isinstance(reference, Arch):
        return reference
    if reference is None or reference.strip().lower() == LARGEST:
        return space.largest()
    key = reference.strip().lower().replace("_", "-")
    if key in REFERENCE_ARCHS:
        return REFERENCE_ARCHS[key]
    try:
        return Arch.parse(reference)
    except ValueError:
        raise ValueError(f"unknown reference arch {reference!r}: use '{LARGEST}', one of "
                         f"{sorted(REFERENCE_ARCHS)}, or an arch like L4_H256_A4_Q256_F1024") from None


def reference_latency(predictor: Predictor, space: SearchSpace, reference: str | Arch | None = None
                      ) -> tuple[Arch, float]:
    arch = reference_arch(space, reference)
    if not space.contains(arch):
        warnings.warn(f"reference arch {arch.name} lies outside space '{space.name}': its latency is "
                      f"extrapolated by the predictor, not interpolated", stacklevel=3)
    with warnings.catch_warnings():  # said once above, not again by the predictor
        warnings.simplefilter("ignore")
        ms = float(np.asarray(predictor.predict([arch]), float).reshape(-1)[0])
    return arch, ms


def parse_target(text: str, predictor: Predictor, space: SearchSpace | str, reference: str | None = None) -> float:
    """A latency target in the predictor's units: '12ms' or '12' as is, '4x' = reference latency / 4."""
    if isinstance(space, str):
        space = SearchSpace.load(space)
    match = _TARGET.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"cannot parse latency target {text!r}: write milliseconds ('12ms', '12.5 ms', '12') "
                         f"or a speed-up over the reference arch ('4x')")
    value, unit = float(match.group(1)), (match.group(2) or "").lower()
    if value <= 0:
        raise ValueError(f"latency target {text!r} must be positive")
    if unit == "x":
        _, ref_ms = reference_latency(predictor, space, reference)
        return ref_ms / value
    if unit == "ms" and predictor.units != "ms":
        raise ValueError(f"latency target {text!r}: the {predictor.units} predictor has no milliseconds; give a "
                         f"speed-up like '4x' or a plain number in {predictor.units}")
    return value

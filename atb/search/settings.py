"""Knobs of the search: the evolution's hyper-parameters (with the paper's and HAT's as presets) and the
latency band around each target.

Presets
- ``autotinybert``: the released AutoTinyBERT searcher (huawei-noah/Pretrained-Language-Model,
  AutoTinyBERT/searcher.py): 25 new candidates a generation, parents = the best 25 evaluated so far,
  chosen by roulette on fitness; each slot is a fresh random in-band arch with probability 0.5
  (``explore_rate``), otherwise a mutation of a parent; mutation moves a field to a neighbouring value
  of its range with probability 0.25 (the code doubles it for hidden and FFN; we use one rate); no
  crossover. The released code runs one generation per manual invocation and does not fix the number
  of generations; 10 here is our assumption, not the paper's.
- ``hat``: HAT (Wang et al., 2020): population 125, parents 25, 50 mutations (each field resampled with
  probability 0.3) and 50 crossovers a generation, 30 generations, parents chosen uniformly.
- ``tiny``: seconds-long searches for tests and the demo.

The band is the paper's: an arch is a candidate for target T when its predicted latency lies in
[0.85 T, 1.1 T].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

PARENT_SELECTION = ("uniform", "roulette")
MUTATION_STYLES = ("resample", "step")
METHODS = ("evolution", "random", "fast")


@dataclass(frozen=True)
class EvolutionSettings:
    population: int = 125  # first generation: this many random in-band archs per target
    parents: int = 25  # the best this-many in-band archs of a target breed its next generation
    mutations: int = 50  # children made by mutating one parent, per target and generation
    crossovers: int = 50  # children made by crossing two parents, per target and generation
    mutation_prob: float = 0.3  # chance that each field of a mutated child changes
    explore_rate: float = 0.0  # chance that a child slot is a fresh random in-band arch instead
    generations: int = 30  # including the first (random) generation
    parent_selection: str = "uniform"  # uniform | roulette (by fitness, as AutoTinyBERT)
    mutation_style: str = "resample"  # resample a field (HAT) | step to a neighbouring value (AutoTinyBERT)

    def validate(self) -> EvolutionSettings:
        for name in ("population", "parents", "generations"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        for name in ("mutations", "crossovers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.generations > 1 and self.mutations + self.crossovers == 0:
            raise ValueError("--mutations and --crossovers are both 0: later generations would have no children")
        for name in ("mutation_prob", "explore_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name} must lie in [0, 1], got {value}")
        if self.parent_selection not in PARENT_SELECTION:
            raise ValueError(f"--parent_selection must be one of {PARENT_SELECTION}, got {self.parent_selection!r}")
        if self.mutation_style not in MUTATION_STYLES:
            raise ValueError(f"--mutation_style must be one of {MUTATION_STYLES}, got {self.mutation_style!r}")
        return self

    @property
    def children_per_generation(self) -> int:
        return self.mutations + self.crossovers

    def budget(self) -> int:
        """Candidates one target proposes over the whole evolution; `random` and `fast` get the same."""
        return self.population + (self.generations - 1) * self.children_per_generation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, EvolutionSettings] = {
    "hat": EvolutionSettings(),
    "autotinybert": EvolutionSettings(population=25, parents=25, mutations=25, crossovers=0, mutation_prob=0.25,
                                      explore_rate=0.5, generations=10, parent_selection="roulette",
                                      mutation_style="step"),
    "tiny": EvolutionSettings(population=6, parents=3, mutations=3, crossovers=3, mutation_prob=0.5,
                              explore_rate=0.0, generations=3),
}


def settings_from(preset: str, overrides: dict[str, Any]) -> EvolutionSettings:
    """A preset with the user's explicit overrides (None = keep the preset's value)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {sorted(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(PRESETS[preset], **given).validate()


@dataclass(frozen=True)
class Band:
    """Relative latency window around a target, as fractions of the target."""

    low: float = 0.85
    high: float = 1.1

    def validate(self) -> Band:
        if not 0.0 < self.low <= 1.0 <= self.high:
            raise ValueError(f"latency band [{self.low}, {self.high}] x target must satisfy 0 < low <= 1 <= high")
        return self

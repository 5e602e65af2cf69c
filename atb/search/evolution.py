"""Which archs each target proposes in a generation: evolution, or the paper's two cheaper baselines.

A proposer is a pure function of (generation, everything evaluated so far, the RNG): given the same
committed state it proposes the same archs, which is what makes a resumed search, or one on a different
number of ranks, end where an uninterrupted single-rank search ends.

Ranking inside a target is by fitness (lower loss or higher score first), ties broken by the arch tuple,
over every evaluated arch whose predicted latency lies in the target's band: the targets share one cache,
so an arch found while searching for one target also competes for any other band it falls in.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from atb.search.sampling import (
    BandUnreachable,
    is_fast_arch,
    sample_in_band,
    step_mutate,
)
from atb.search.settings import METHODS, EvolutionSettings
from atb.search.targets import LatencyOracle, Target
from atb.space import Arch, SearchSpace


@dataclass(frozen=True)
class Record:
    """One evaluated arch."""

    arch: Arch
    score: float
    latency: float
    generation: int
    seconds: float


class Proposer:
    def __init__(self, method: str, settings: EvolutionSettings, space: SearchSpace, targets: list[Target],
                 oracle: LatencyOracle, higher_is_better: bool, budget: int = 0, max_draws: int = 5000,
                 max_tries: int = 100):
        if method not in METHODS:
            raise ValueError(f"unknown --method {method!r}; choose one of {METHODS}")
        self.method = method
        self.settings = settings
        self.space = space
        self.targets = targets
        self.oracle = oracle
        self.higher_is_better = higher_is_better
        self.budget = budget or settings.budget()
        self.max_draws = max_draws  # random draws allowed to find one new in-band arch
        self.max_tries = max_tries  # mutations/crossovers allowed to produce one new in-band child

    # ---- schedule -------------------------------------------------------------------------------
    @property
    def total_generations(self) -> int:
        if self.method == "evolution":
            return self.settings.generations
        return math.ceil(self.budget / self.settings.population)

    def key(self, record: Record) -> tuple:
        """Sort key: best first, deterministic among equal scores."""
        return (-record.score if self.higher_is_better else record.score, record.arch)

    def ranked(self, target: Target, evaluated: dict[Arch, Record]) -> list[Record]:
        in_band = [r for r in evaluated.values()
                   if target.contains(r.latency) and self.space.contains(r.arch) and self.is_candidate(r.arch)]
        return sorted(in_band, key=self.key)

    # ---- one generation -------------------------------------------------------------------------
    def propose(self, generation: int, evaluated: dict[Arch, Record], proposed: dict[str, list[Arch]],
                rng: random.Random) -> dict[str, list[Arch]]:
        """Archs each target wants evaluated this generation (some may already be in the cache)."""
        out: dict[str, list[Arch]] = {}
        for target in self.targets:  # fixed order: the RNG stream is consumed identically every time
            if self.method == "evolution" and generation > 0:
                out[target.label] = self._children(target, evaluated, rng)
            else:
                count = self.settings.population
                if self.method != "evolution":
                    count = min(count, self.budget - len(proposed.get(target.label, [])))
                exclude = set(evaluated) | set(proposed.get(target.label, []))
                out[target.label] = self._fresh(target, count, exclude, rng, first=generation == 0)
        return out

    def _fresh(self, target: Target, count: int, exclude: set[Arch], rng: random.Random, first: bool) -> list[Arch]:
        fast = self.method == "fast"
        picked: list[Arch] = []
        for _ in range(max(count, 0)):
            arch = sample_in_band(self.space, target, self.oracle, rng, self.max_draws, exclude | set(picked), fast)
            if arch is None:
                if first and not picked:
                    what = "AutoTinyBERT-Fast arch" if fast else "arch"
                    raise BandUnreachable(
                        f"target {target.label!r}: no {what} of space '{self.space.name}' found with predicted "
                        f"latency in [{target.low:.4g}, {target.high:.4g}] after {self.max_draws} draws; "
                        "widen the band or choose another target")
                break  # the band holds no further new arch: propose fewer
            picked.append(arch)
        return picked

    def _children(self, target: Target, evaluated: dict[Arch, Record], rng: random.Random) -> list[Arch]:
        s = self.settings
        ranked = self.ranked(target, evaluated)
        if not ranked:
            raise BandUnreachable(f"target {target.label!r}: no evaluated arch lies in its band; nothing to evolve")
        parents = ranked[: s.parents]
        seen = set(evaluated)
        children: list[Arch] = []
        for slot in range(s.children_per_generation):
            if s.explore_rate and rng.random() < s.explore_rate:
                child = sample_in_band(self.space, target, self.oracle, rng, self.max_draws, seen)
            elif slot < s.mutations:
                child = self._bred(target, seen, rng, lambda: self._mutate(self._pick(parents, rng).arch, rng))
            else:
                child = self._bred(target, seen, rng, lambda: self._cross(parents, rng))
            if child is not None:
                children.append(child)
                seen.add(child)
        return children

    def _bred(self, target: Target, seen: set[Arch], rng: random.Random, make) -> Arch | None:
        """A new in-band child within `max_tries`; failing that, the last in-band one (already known, so free)."""
        fallback = None
        for _ in range(self.max_tries):
            child = make()
            if target.contains(self.oracle.one(child)):
                if child not in seen:
                    return child
                fallback = child
        return fallback

    def _mutate(self, arch: Arch, rng: random.Random) -> Arch:
        if self.settings.mutation_style == "step":
            return step_mutate(self.space, arch, rng, self.settings.mutation_prob)
        return self.space.mutate(arch, rng, self.settings.mutation_prob)

    def _cross(self, parents: list[Record], rng: random.Random) -> Arch:
        if len(parents) == 1:
            return parents[0].arch
        a, b = rng.sample(parents, 2) if self.settings.parent_selection == "uniform" else (
            self._pick(parents, rng), self._pick(parents, rng))
        return self.space.crossover(a.arch, b.arch, rng)

    def _pick(self, parents: list[Record], rng: random.Random) -> Record:
        if self.settings.parent_selection == "uniform" or len(parents) == 1:
            return rng.choice(parents)
        # roulette on fitness above the worst parent, as AutoTinyBERT (the worst parent gets weight 0)
        keys = [self.key(p)[0] for p in parents]
        weights = [max(keys) - k for k in keys]
        if sum(weights) <= 0:
            return rng.choice(parents)
        return rng.choices(parents, weights=weights, k=1)[0]

    def is_candidate(self, arch: Arch) -> bool:
        """Satisfies the method's own rule besides the band (Fast: the ffn/qkv ratio rule)."""
        return self.method != "fast" or is_fast_arch(arch)

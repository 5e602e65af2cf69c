"""Which sub-architectures a training step trains.

The archs of step `s` are a pure function of (seed, s): every rank computes the same list without
communicating (ZeRO-3 gathers parameters module by module, so ranks running different depths would
deadlock), and a resumed run trains exactly the archs the uninterrupted run would have.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from atb.data.loader import derive_seed
from atb.space import Arch, SearchSpace

RULES = ("uniform", "sandwich", "fixed")


@dataclass(frozen=True)
class ArchSampler:
    space: SearchSpace
    rule: str = "uniform"
    seed: int = 0
    sandwich_random: int = 2
    fixed: tuple[Arch, ...] = ()

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown sampling rule {self.rule!r}; choose one of {RULES}")
        if self.rule == "fixed":
            if not self.fixed:
                raise ValueError("sampling rule 'fixed' needs at least one arch")
            for arch in self.fixed:
                self.space.validate(arch)

    def archs_for_step(self, step: int) -> list[Arch]:
        """uniform: one random arch (the paper). sandwich: largest, smallest and N random (the largest
        first, so in-place distillation can use its predictions as soft targets for the others)."""
        rng = random.Random(derive_seed(self.seed, "archs", step))
        if self.rule == "uniform":
            return [self.space.sample(rng)]
        if self.rule == "sandwich":
            return [self.space.largest(), self.space.smallest()] + [
                self.space.sample(rng) for _ in range(self.sandwich_random)]
        return list(self.fixed)

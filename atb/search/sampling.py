"""Drawing archs that satisfy a target's band: random, under the AutoTinyBERT-Fast rule, and by
neighbour-step mutation.

All randomness comes from the `random.Random` passed in, so the rank that proposes candidates (rank 0)
and a resumed run make exactly the same draws.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

from atb.search.targets import LatencyOracle, Target
from atb.space import ARCH_FIELDS, Arch, SearchSpace

DRAWS_PER_ROUND = 64  # archs drawn, then predicted together, per rejection-sampling round


class BandUnreachable(ValueError):
    """No arch of the space (or of the Fast subset) could be found inside a target's band."""


def is_fast_arch(arch: Arch) -> bool:
    """AutoTinyBERT-Fast: ffn between 1.6 and 1.9 times hidden, qkv between 0.7 times hidden and hidden."""
    return 1.6 * arch.hidden <= arch.ffn <= 1.9 * arch.hidden and 0.7 * arch.hidden <= arch.qkv <= arch.hidden


def sample_fast(space: SearchSpace, rng: random.Random) -> Arch:
    """A uniform-per-field draw from the Fast subset, built directly (rejection from the whole space would
    almost never hit the narrow ffn/qkv windows of a large space)."""
    options = _fast_options(space)
    if not options:
        raise BandUnreachable(f"space '{space.name}' holds no arch with 1.6*hidden <= ffn <= 1.9*hidden and "
                              "0.7*hidden <= qkv <= hidden (the AutoTinyBERT-Fast rule)")
    hidden = rng.choice(sorted(options))
    ffns, head_qkv = options[hidden]
    heads, qkv = rng.choice(head_qkv)
    return Arch(rng.choice(space.layers.values()), hidden, heads, qkv, rng.choice(ffns))


@lru_cache(maxsize=16)  # spaces are frozen (hashable); the table is the same for every draw
def _fast_options(space: SearchSpace) -> dict[int, tuple[list[int], list[tuple[int, int]]]]:
    options = {}
    for h in space.hidden.values():
        ffns = [f for f in space.ffn.values() if 1.6 * h <= f <= 1.9 * h]
        head_qkv = [(a, q) for a in space.heads.values() for q in space.qkv_choices(a) if 0.7 * h <= q <= h]
        if ffns and head_qkv:
            options[h] = (ffns, head_qkv)
    return options


def sample_in_band(space: SearchSpace, target: Target, oracle: LatencyOracle, rng: random.Random,
                   max_draws: int, exclude: set[Arch] | frozenset = frozenset(), fast: bool = False) -> Arch | None:
    """First draw inside the band and not in `exclude`; None when `max_draws` draws found none.

    Draws come in rounds of DRAWS_PER_ROUND so the predictor sees batches; the draws are consumed in order,
    so the result depends only on the RNG state, not on the round size.
    """
    draw: Callable[[], Arch] = (lambda: sample_fast(space, rng)) if fast else (lambda: space.sample(rng))
    done = 0
    while done < max_draws:
        batch = [draw() for _ in range(min(DRAWS_PER_ROUND, max_draws - done))]
        done += len(batch)
        for arch, latency in zip(batch, oracle.of(batch)):
            if target.contains(latency) and arch not in exclude:
                return arch
    return None


def step_mutate(space: SearchSpace, arch: Arch, rng: random.Random, prob: float) -> Arch:
    """Each field moves, with probability `prob`, one or two steps along its range (AutoTinyBERT's
    mutation: children stay near their parent). Heads move among counts that admit some qkv; qkv then
    steps among the choices the (new) head count allows, starting from the nearest one."""
    values = arch.to_dict()
    for field in ARCH_FIELDS:
        if field == "qkv" or rng.random() >= prob:
            continue
        if field == "heads":
            choices = [h for h in space.heads.values() if space.qkv_choices(h)]
        else:
            choices = getattr(space, field).values()
        values[field] = _step(choices, values[field], rng)
    qkv_choices = space.qkv_choices(values["heads"])
    nearest = min(qkv_choices, key=lambda q: (abs(q - values["qkv"]), q))
    values["qkv"] = _step(qkv_choices, nearest, rng) if rng.random() < prob else nearest
    return space.validate(Arch(**values))


def _step(choices: list[int], current: int, rng: random.Random) -> int:
    index = choices.index(current)
    reachable = [index + d for d in (-2, -1, 1, 2) if 0 <= index + d < len(choices)]
    return choices[rng.choice(reachable)] if reachable else current

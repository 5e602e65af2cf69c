"""Which architectures to measure.

A predictor is only as good as the corner of the space it was trained on. Uniform sampling of a few dozen
archs leaves gaps (few 1-layer or 8-layer nets, few tiny FFNs), so the sample is a Latin hypercube over
layers, hidden, heads, qkv (its position among the heads' allowed values) and ffn: each field's range is cut
into N equal strata and every stratum is used exactly once. The space's largest and smallest archs are
always included (they bound the range and are the usual speed-up reference), and a share of archs with
qkv == hidden, which export as stock BERT and run through different code, so the predictor sees them.
"""

from __future__ import annotations

import random

from atb.space import Arch, SearchSpace


def _stratified(values: list, n: int, rng: random.Random) -> list:
    """n picks from `values`, one per equal-width stratum of the index range, in random order."""
    picks = [values[min(int((i + rng.random()) / n * len(values)), len(values) - 1)] for i in range(n)]
    rng.shuffle(picks)
    return picks


def sample_archs(space: SearchSpace, n: int, seed: int = 0, vanilla_fraction: float = 0.1) -> list[Arch]:
    """`n` distinct archs of `space`, deterministic in (space, n, seed); largest and smallest first."""
    if n < 2:
        raise ValueError(f"need at least 2 archs (the space's largest and smallest), got n={n}")
    size = space.enumerate_size()
    if n > size:
        raise ValueError(f"space '{space.name}' holds only {size} archs, cannot sample n={n} distinct ones")
    rng = random.Random(seed)
    chosen: list[Arch] = []
    seen: set[Arch] = set()

    def add(arch: Arch) -> None:
        if arch not in seen:
            seen.add(space.validate(arch))
            chosen.append(arch)

    add(space.largest())
    add(space.smallest())
    k = n - len(chosen)
    heads_ok = [h for h in space.heads.values() if space.qkv_choices(h)]
    vanilla_pairs = [(h, q) for h in heads_ok for q in space.qkv_choices(h) if q in space.hidden]
    n_vanilla = round(k * vanilla_fraction) if vanilla_pairs else 0
    layers = _stratified(space.layers.values(), k, rng)
    hidden = _stratified(space.hidden.values(), k, rng)
    heads = _stratified(heads_ok, k, rng)
    ffn = _stratified(space.ffn.values(), k, rng)
    qkv_position = _stratified([i / k for i in range(k)], k, rng)
    for i in range(k):
        if i < n_vanilla:
            h, q = rng.choice(vanilla_pairs)
            add(Arch(layers[i], q, h, q, ffn[i]))
            continue
        choices = space.qkv_choices(heads[i])
        q = choices[min(int(qkv_position[i] * len(choices)), len(choices) - 1)]
        add(Arch(layers[i], hidden[i], heads[i], q, ffn[i]))
    while len(chosen) < n:  # collisions in a small space: top up at random
        add(space.sample(rng))
    rest = chosen[2:]
    rng.shuffle(rest)  # measure in random order, so slow drift of the machine does not track arch size
    return chosen[:2] + rest

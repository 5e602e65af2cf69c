"""The search space of a compression run, derived from the source model's shape; the part of it a search
ranks by default; and the check that an explicit space does not exceed that shape."""

from __future__ import annotations

from typing import Any

from atb.space import SearchSpace, SpaceError

NARROWEST_SHARE = 0.25  # of the largest FFN and qkv widths, in the part of a compressed SuperPLM's space searched


def _grid(largest: int, step: int) -> dict[str, int]:
    """A range ending exactly at `largest` with `step`, starting at the smallest positive value on it."""
    step = min(step, largest)
    return {"min": largest - step * ((largest - 1) // step), "max": largest, "step": step}


def space_from_source(layers: int, hidden: int, heads: int, qkv: int, ffn: int, hidden_step: int = 0,
                      ffn_step: int = 0, head_dim_step: int = 0) -> dict[str, Any]:
    """The spec of a space whose largest arch is the source model: layers 1..L, hidden and FFN up to the
    source's, heads fixed at the source's with per-head qkv (every head kept, as in the `kd` preset, so
    attention maps align with the source as teacher). Steps of 0 give about 12 hidden sizes, 16 FFN sizes
    and 8 head sizes."""
    head_dim = qkv // heads
    hidden_step = hidden_step or max(1, hidden // 12)
    ffn_step = ffn_step or max(1, ffn // 16)
    head_dim_step = head_dim_step or max(1, head_dim // 8)
    for name, value in (("hidden_step", hidden_step), ("ffn_step", ffn_step), ("head_dim_step", head_dim_step)):
        if value < 1:
            raise SpaceError(f"--{name} must be >= 1, got {value}")
    qkv_range = _grid(head_dim, head_dim_step)
    return {"name": "from_model", "layers": {"min": 1, "max": layers, "step": 1},
            "hidden": _grid(hidden, hidden_step), "heads": {"min": heads, "max": heads, "step": 1},
            "qkv": {k: v * heads for k, v in qkv_range.items()}, "ffn": _grid(ffn, ffn_step)}


def check_within(space: SearchSpace, layers: int, hidden: int, heads: int, qkv: int, ffn: int, source: str) -> None:
    """A space compressing a source may not be larger than it in any dimension."""
    largest = space.largest()
    limits = {"layers": layers, "hidden": hidden, "heads": heads, "qkv": qkv, "ffn": ffn}
    over = [f"{f} {getattr(largest, f)} > {limit}" for f, limit in limits.items() if getattr(largest, f) > limit]
    if space.max_head_dim > qkv // heads:
        over.append(f"head size {space.max_head_dim} > {qkv // heads}")
    if over:
        raise SpaceError(f"space '{space.name}' is larger than the source {source} ({', '.join(over)}); "
                         "use --space from_model or a space within the source's shape")


def searched_part(space: SearchSpace) -> SearchSpace:
    """What a search ranks in a SuperPLM compressed from a pre-trained model: the hidden size fixed at its
    largest, and FFN and qkv from the first value on their grid that keeps NARROWEST_SHARE of the largest.
    Cutting hidden channels, or starving a layer's FFN or heads to a tenth or a fifth, cost more fine-tuned
    accuracy than a moderate cut of the same latency, and neither fitness sees it: a starved layer passes the
    residual stream on nearly unchanged (bench/RESULTS.md)."""
    spec = space.to_spec()
    widest = spec["hidden"]["max"]
    spec.update(name=f"{space.name}_searched", hidden={"min": widest, "max": widest, "step": 1})
    for dim in ("ffn", "qkv"):
        grid = getattr(space, dim)
        if grid is not None:  # qkv has no range of its own when the head size is fixed
            spec[dim] = {**spec[dim], "min": min(v for v in grid.values() if v >= NARROWEST_SHARE * grid.max)}
    return SearchSpace.from_spec(spec)

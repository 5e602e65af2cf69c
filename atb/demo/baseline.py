"""The paper's main claim, checked every demo: a searched arch vs the BERT-ratio arch of the same latency.

BERT's shape rules (ffn = 4 x hidden, head size 64, qkv = hidden) define one family of archs; for each
latency target the baseline is the member whose predicted latency is closest to the searched pick's. Both
are developed and fine-tuned the same way, so the only difference is the architecture.
"""

from __future__ import annotations

from pathlib import Path

from atb.fsutil import write_json_atomic
from atb.latency import LatencyPredictor
from atb.search.outputs import read_results
from atb.space import Arch, SearchSpace


def bert_ratio_archs(space: SearchSpace) -> list[Arch]:
    """ffn = 4 x hidden, qkv = hidden, and head size 64 (or, where the space fixes the heads, those heads)."""
    fixed_heads = space.heads.min == space.heads.max
    archs = []
    for layers in space.layers.values():
        for hidden in space.hidden.values():
            heads = space.heads.max if fixed_heads else hidden // 64
            if not fixed_heads and (hidden % 64 or heads not in space.heads):
                continue
            arch = Arch(layers, hidden, heads, hidden, 4 * hidden)
            if space.contains(arch):
                archs.append(arch)
    return archs


def picks_with_baselines(results: Path, predictor_dir: Path, space_name: str | Path, out: Path) -> list[dict]:
    """Search picks plus, per target, the BERT-ratio arch of the nearest predicted latency."""
    predictor = LatencyPredictor.load(predictor_dir)
    space = SearchSpace.load(space_name)
    family = bert_ratio_archs(space)
    if not family:
        raise ValueError(f"space '{space.name}' contains no BERT-ratio arch (ffn = 4 x hidden, qkv = hidden)")
    family_ms = predictor.predict(family)
    entries = []
    seen = set()
    for entry in read_results(results):
        entries.append(entry)
        seen.add(entry["arch"])
    pairs = {}  # target -> {searched, baseline}: the search may pick the BERT-ratio arch itself
    for entry in list(entries):
        target_ms = entry["predicted_ms"]
        best = min(range(len(family)), key=lambda i: abs(float(family_ms[i]) - target_ms))
        arch = family[best]
        pairs[entry["target"]] = {"searched": entry["arch"], "baseline": arch.name}
        if arch.name in seen:  # developed and fine-tuned once, compared under both names
            continue
        seen.add(arch.name)
        entries.append({"target": f"{entry['target']} (BERT-ratio)", "arch": arch.name,
                        "predicted_ms": float(family_ms[best])})
    # written in the search's results format, so tools/develop.py --results reads it
    write_json_atomic(out, {"targets": [{"target": e["target"], "best": {"arch": e["arch"],
                                                                         "latency_ms": e["predicted_ms"]}}
                                        for e in entries], "pairs": pairs})
    return entries

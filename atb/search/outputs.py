"""What a search leaves for people and for the next tools: results.json (per target: the best arch, the top
five and the best of each depth; a sanity check of the supernet), candidates.jsonl (every evaluated arch)
and pareto.png.

All three are rewritten atomically from the committed state, so they always describe one consistent
generation, also while the search is still running or after it was killed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from atb.fsutil import read_json, write_json_atomic, write_text_atomic
from atb.search.evolution import Proposer, Record
from atb.search.state import SearchState
from atb.space import Arch

TOP_PER_TARGET = 5


def record_json(record: Record) -> dict[str, Any]:
    return {"arch": record.arch.to_dict(), "name": record.arch.name, "latency_ms": record.latency,
            "score": record.score, "generation": record.generation}


def pareto_front(records: list[Record], higher_is_better: bool) -> list[Record]:
    """Archs that no other arch beats on both predicted latency and fitness, fastest first."""
    sign = -1.0 if higher_is_better else 1.0
    front: list[Record] = []
    for r in sorted(records, key=lambda r: (r.latency, sign * r.score, r.arch)):
        if not front or sign * r.score < sign * front[-1].score:
            front.append(r)
    return front


def best_per_depth(ranked: list[Record]) -> list[Record]:
    """The best of `ranked` (best first) for each layer count, shallowest first. The fitnesses rank shapes of
    equal latency mostly by depth, which fine-tuned accuracy does not follow, so these are the candidates
    worth developing and comparing on a task."""
    firsts: dict[int, Record] = {}
    for record in ranked:
        firsts.setdefault(record.arch.layers, record)
    return [firsts[layers] for layers in sorted(firsts)]


def target_results(state: SearchState, proposer: Proposer) -> list[dict[str, Any]]:
    out = []
    for target in proposer.targets:
        ranked = proposer.ranked(target, state.evaluated)
        best = ranked[0] if ranked else None
        if best is not None:  # by construction; a violated band or space here would be a bug, so say it loudly
            proposer.space.validate(best.arch)
            if not target.contains(best.latency):
                raise AssertionError(f"best arch {best.arch.name} of target {target.label} is outside its band")
        out.append({**target.to_dict(), "best": record_json(best) if best else None,
                    "in_band_evaluated": len(ranked), "proposed": len(state.proposed.get(target.label, [])),
                    "top": [record_json(r) for r in ranked[:TOP_PER_TARGET]],
                    "best_per_depth": [record_json(r) for r in best_per_depth(ranked)]})
    return out


def sanity_report(state: SearchState, proposer: Proposer, largest: Arch) -> dict[str, Any]:
    """A well-trained supernet ranks its largest sub-network first; when a smaller one scores better the
    weight sharing has hurt the big archs (or the fitness is too noisy), and the search's ranking is
    suspect: that is worth a warning in the results, not a silent best arch."""
    ref = state.evaluated.get(largest)
    if ref is None:
        return {"largest": None, "note": "the largest arch has not been evaluated yet"}
    better = [r for r in state.evaluated.values() if proposer.key(r)[0] < proposer.key(ref)[0]]  # strictly
    best = min(state.evaluated.values(), key=proposer.key)
    report = {"largest": record_json(ref), "best_overall": record_json(best),
              "largest_is_best": not better, "archs_scoring_better_than_largest": len(better),
              "evaluated": len(state.evaluated)}
    if better:
        report["warning"] = (f"{len(better)} of {len(state.evaluated)} evaluated archs score better than the "
                             f"largest (best {best.arch.name} scores {best.score:.4g}, the largest {ref.score:.4g}): "
                             "the supernet may be under-trained for its large sub-networks, or the fitness too noisy")
    return report


def write_outputs(out_dir: Path, state: SearchState, proposer: Proposer, largest: Arch, info: dict[str, Any],
                  complete: bool, plot: bool) -> dict[str, Any]:
    results = {
        **info,
        "status": "complete" if complete else "in progress",
        "generations_done": state.generation,
        "generations_planned": proposer.total_generations,
        # computed counts every evaluation run in this folder (by any rank, in any run, killed ones too)
        "evaluations": {"unique_archs": len(state.evaluated), "computed": state.computed},
        "targets": target_results(state, proposer),
        "sanity": sanity_report(state, proposer, largest),
    }
    write_json_atomic(out_dir / "results.json", results)
    lines = []
    for r in sorted(state.evaluated.values(), key=lambda r: (r.generation, r.arch)):
        in_bands = [t.label for t in proposer.targets if t.contains(r.latency) and proposer.is_candidate(r.arch)]
        lines.append(json.dumps({**record_json(r), "seconds": r.seconds, "targets": in_bands}))
    write_text_atomic(out_dir / "candidates.jsonl", "".join(line + "\n" for line in lines))
    if plot:
        plot_pareto(out_dir / "pareto.png", state, proposer, results)
    return results


def read_results(path: Path) -> list[dict[str, Any]]:
    """(target, arch name, predicted latency) per target of a results.json that `write_outputs` wrote."""
    data = read_json(path, "search results")
    entries = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a search results.json with a 'targets' list")
    out = []
    for entry in entries:
        best = entry.get("best")
        if not isinstance(best, dict) or "arch" not in best:
            raise ValueError(f"{path}: target {entry.get('target')!r} has no best arch (did the search finish?)")
        out.append({"target": str(entry.get("target")), "arch": Arch.parse(best["arch"]).name,
                    "predicted_ms": best.get("latency_ms")})
    return out


def plot_pareto(path: Path, state: SearchState, proposer: Proposer, results: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed (pip install '.[demo]'); pareto.png not written")
        return
    records = list(state.evaluated.values())
    if not records:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in proposer.targets:
        ax.axvspan(target.low, target.high, alpha=0.08, color="tab:blue")
    ax.scatter([r.latency for r in records], [r.score for r in records], s=10, color="0.6", label="evaluated")
    front = pareto_front(records, proposer.higher_is_better)
    ax.plot([r.latency for r in front], [r.score for r in front], "-o", ms=3, color="tab:orange", label="Pareto front")
    for t in results["targets"]:
        if t["best"]:
            ax.scatter([t["best"]["latency_ms"]], [t["best"]["score"]], marker="*", s=160, color="tab:red", zorder=3)
            ax.annotate(t["target"], (t["best"]["latency_ms"], t["best"]["score"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    ax.scatter([], [], marker="*", s=80, color="tab:red", label="pick per target (band shaded)")
    ax.set_xlabel(f"predicted latency ({proposer.oracle.predictor.units})")
    ax.set_ylabel(f"{results.get('fitness', {}).get('name', 'fitness')} "
                  f"({'higher' if proposer.higher_is_better else 'lower'} is better)")
    ax.set_title(f"{results.get('method', 'search')}: {len(records)} archs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)

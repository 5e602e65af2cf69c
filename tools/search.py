"""Search architectures of a SuperPLM for latency targets, on 1..N ranks, resumable.

    # one process, two targets, evolution with HAT's settings, a FLOPs proxy for latency
    python tools/search.py --checkpoint runs/pretrain/supernet --targets 4x,8x --out_dir runs/search
    # a measured latency predictor, the paper's settings, 2 ranks (CPU: DS_ACCELERATOR=cpu)
    torchrun --nproc_per_node 2 tools/search.py --checkpoint runs/pretrain/checkpoints \\
        --predictor runs/latency/predictor --targets 12ms,20ms --preset autotinybert
    deepspeed --num_accelerators 2 tools/search.py ...   # the deepspeed launcher works too
    # the paper's cheaper baselines, on the same budget as evolution
    python tools/search.py ... --method random      # or --method fast

Re-running with the same --out_dir continues a stopped or killed search without evaluating anything
twice. Outputs: results.json, candidates.jsonl, pareto.png in --out_dir.
"""

from __future__ import annotations

from atb.cli import run_cli
from atb.fsutil import require_path
from atb.search.config import SearchConfig


def run(cfg: SearchConfig) -> None:
    if cfg.checkpoint:  # refused before the seconds of heavy imports; the search reports a missing flag itself
        require_path(cfg.checkpoint, "SuperPLM checkpoint")
    from atb.search import run_search

    results = run_search(cfg)
    if results is None:  # not rank 0
        return
    for t in results["targets"]:
        best = t["best"]
        pick = f"{best['name']}  latency {best['latency_ms']:.4g}  score {best['score']:.4f}" if best else "none found"
        print(f"target {t['target']}: {pick}")
    sanity = results["sanity"]
    if sanity.get("warning"):
        print(f"warning: {sanity['warning']}")
    print(f"{results['status']}: {results['generations_done']} generation(s), "
          f"{results['evaluations']['unique_archs']} archs evaluated -> {cfg.out_dir}/results.json")


if __name__ == "__main__":
    run_cli(SearchConfig, run, prog="search")

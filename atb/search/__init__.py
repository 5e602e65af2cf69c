"""Latency-constrained architecture search over a SuperPLM (see tools/search.py).

    settings.py   evolution hyper-parameters, the paper's and HAT's presets, the latency band
    targets.py    latency targets, the predictor (memoised), the FLOPs proxy
    sampling.py   in-band random draws, the AutoTinyBERT-Fast rule, neighbour-step mutation
    evolution.py  what each target proposes per generation (evolution | random | fast)
    state.py      state.json (committed per generation) and the per-rank evaluation journal
    parallel.py   rank collectives and the cost-balanced split of a generation's evaluations
    loop.py       the generation loop (rank 0 plans and commits, every rank evaluates its share)
    fitness.py    the dev-loss fitness (MLM or KD) of a sub-network; dev_data.py its held-out batches
    finetune_fitness.py   the quick fine-tune fitness (a child process per evaluation)
    outputs.py    results.json, candidates.jsonl, pareto.png
    config.py / runner.py   the CLI's config and its wiring to a checkpoint, data and ranks
"""

from atb.search.config import SearchConfig
from atb.search.settings import PRESETS, Band, EvolutionSettings

__all__ = ["PRESETS", "Band", "EvolutionSettings", "SearchConfig", "run_search"]


def run_search(cfg: SearchConfig):
    from atb.search.runner import run_search as _run

    return _run(cfg)

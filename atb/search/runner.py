"""`tools/search.py`: from a SuperPLM checkpoint to results.json, on 1..N ranks.

Start-up order matters for N ranks: rank 0 consolidates a DeepSpeed checkpoint once into
`<out_dir>/supernet` while the others wait, then every rank loads those weights once and builds the same
dev batches; after that, ranks meet only to receive work and return scores (see loop.py).

Same seed, same result on any number of ranks: each candidate is scored by one rank on the same weights
and batches. Bitwise equality assumes the same threads per rank (torchrun sets OMP_NUM_THREADS=1 for
several ranks; set it for a single-rank run you want to compare) and deterministic kernels (CPU; on GPU
cuBLAS may differ in the last bits, which only matters for near-ties).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from atb.data import load_tokenizer
from atb.data.tokenizer import demo_tokenizer_path
from atb.fsutil import read_json, require_path
from atb.model.supernet_io import SUPERNET_JSON, is_supernet_folder, load_supernet, save_supernet
from atb.search.config import SearchConfig
from atb.search.dev_data import load_dev_batches, read_dev_batches
from atb.search.evolution import Proposer
from atb.search.finetune_fitness import QuickFinetuneFitness
from atb.search.fitness import DevLossFitness, RepresentationFitness, load_kd_projection, save_kd_projection
from atb.search.loop import LoopSpec, run_search_loop
from atb.search.parallel import Comm, LocalComm, TorchComm
from atb.search.targets import LatencyOracle, load_predictor, resolve_targets
from atb.source_space import searched_part
from atb.space import SearchSpace
from atb.train.checkpointing import validate
from atb.train.consolidate import load_deepspeed_supernet, resolve
from atb.train.distributed import init_distributed
from atb.train.objectives import Teacher, check_teacher_fits
from atb.train.recorded_data import adopt_recorded_data

CONSOLIDATED = "supernet"


def start_ranks() -> tuple[Comm, torch.device]:
    """torch.distributed under a launcher; a plain process needs no process group at all."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "RANK" in os.environ:
        env = init_distributed()
        return TorchComm(), env.device
    return LocalComm(), torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checkpoint_step(path: Path) -> Any:
    """The step a DeepSpeed checkpoint directory (root or tag folder) holds, from its completion record."""
    root, tag = resolve(path)
    return validate(root / tag).get("step")


def consolidated_from(folder: Path) -> tuple[Any, Any]:
    """(source checkpoint, step) an earlier run consolidated into `folder`; (None, None) if none did."""
    if not (folder / SUPERNET_JSON).is_file():
        return None, None
    meta = read_json(folder / SUPERNET_JSON, "SuperPLM config").get("meta", {})
    return meta.get("source_checkpoint"), meta.get("step")


def load_weights(checkpoint: str, out_dir: Path, comm: Comm, trust_checkpoint: bool = False):
    """(model, meta, folder): every rank loads a SuperPLM folder; a DeepSpeed checkpoint is consolidated into
    one by rank 0 first (with the KD projection beside it, when the checkpoint trained one)."""
    path = require_path(checkpoint, "SuperPLM checkpoint")
    if is_supernet_folder(path):
        return (*load_supernet(path), path)
    folder = out_dir / CONSOLIDATED
    error = None
    if comm.rank == 0:
        try:
            source = str(path.resolve())
            if consolidated_from(folder) != (source, checkpoint_step(path)):  # a resumed search skips this
                model, meta = load_deepspeed_supernet(path, trust_checkpoint)
                save_supernet(model, folder, meta={**meta, "source_checkpoint": source}, overwrite=True)
                if meta.get("objective") == "kd":
                    save_kd_projection(path, folder, trust_checkpoint)
        except Exception as err:  # tell the waiting ranks
            error = err
    message = comm.broadcast(str(error) if error else "")
    if error:
        raise error
    if message:
        raise ValueError(f"rank 0 could not consolidate {path}: {message}")
    return (*load_supernet(folder), folder)


SEARCH_DATA_FIELDS = {"corpus": ("corpus", "demo"), "dev_fraction": ("dev_fraction", 0.01),
                      "data_seed": ("data_seed", 0), "seq_len": ("seq_len", 128), "tokenizer": ("tokenizer", None)}


def adopt_search_data(cfg: SearchConfig, meta: dict[str, Any], announce: bool) -> None:
    """Score candidates on the SuperPLM's own dev split unless flags say otherwise."""
    adopt_recorded_data(cfg, meta, SEARCH_DATA_FIELDS, cfg.checkpoint, "search", announce,
                        need_corpus=cfg.fitness != "finetune" and not cfg.dev_data)


def tokenizer_path(cfg: SearchConfig, meta: dict[str, Any]) -> str:
    path = cfg.tokenizer or meta.get("tokenizer")
    if not path:
        raise ValueError("the checkpoint does not name its tokenizer; pass --tokenizer")
    if path == "demo":
        return demo_tokenizer_path()
    return str(path)


def build_fitness(cfg: SearchConfig, model, meta: dict[str, Any], weights: Path, device: torch.device, out_dir: Path,
                  rank: int):
    if cfg.fitness == "finetune":
        work_dir = out_dir / "finetune_work" / f"rank{rank}"
        return QuickFinetuneFitness(weights, tokenizer_path(cfg, meta), cfg.task, work_dir, space=model.space,
                                    epochs=cfg.finetune_epochs, max_train_samples=cfg.finetune_train_samples,
                                    max_eval_samples=cfg.finetune_eval_samples, seed=cfg.seed,
                                    max_seq_len=cfg.seq_len or int(meta.get("seq_len", 128)),
                                    device_index=device.index if device.type == "cuda" else None)

    if cfg.dev_data:
        batches = read_dev_batches(cfg.dev_data, cfg.dev_batches)
    else:
        seq_len = cfg.seq_len or int(meta.get("seq_len", 128))
        batches = load_dev_batches(cfg.corpus, load_tokenizer(tokenizer_path(cfg, meta)), seq_len, cfg.dev_fraction,
                                   cfg.data_seed, cfg.batch_size, cfg.dev_batches,
                                   cache_dir=str(out_dir / "data_cache"))
    teacher = projection = None
    if cfg.fitness in ("kd", "cka"):
        teacher = Teacher.load(cfg.teacher, device, torch.float32)
        check_teacher_fits(teacher, model, compare_heads=cfg.fitness == "kd")
    if cfg.fitness == "cka":
        return RepresentationFitness(model, batches, teacher, device)
    if cfg.fitness == "kd":
        projection = load_kd_projection(weights)
        if projection is None:
            warnings.warn(f"{weights} carries no trained KD projection: the KD fitness uses the attention term alone "
                          "(pass the DeepSpeed checkpoint dir, which holds the projection, for the hidden-state term)")
    return DevLossFitness(model, batches, device, cfg.fitness, teacher, projection)


def fingerprint(cfg: SearchConfig, proposer: Proposer, space_spec: dict, meta: dict[str, Any], fitness_name: str):
    """Settings that change what a score means or which archs are proposed; resuming must match them."""
    settings = proposer.settings.to_dict()
    if proposer.method == "evolution":
        settings.pop("generations")  # a finished evolution may be continued for more generations
    return {
        "method": proposer.method, "settings": settings, "budget": proposer.budget if proposer.method != "evolution"
        else None, "seed": cfg.seed, "targets": [t.to_dict() for t in proposer.targets],
        "space": space_spec, "checkpoint": str(Path(cfg.checkpoint).resolve()), "checkpoint_step": meta.get("step"),
        "predictor": cfg.predictor, "fitness": fitness_name,
        "data": {k: getattr(cfg, k) for k in ("dev_data", "corpus", "tokenizer", "seq_len", "dev_fraction", "data_seed",
                                              "batch_size", "dev_batches", "teacher", "task", "finetune_epochs",
                                              "finetune_train_samples", "finetune_eval_samples")},
    }


def searched_space(requested: str, whole: SearchSpace, meta: dict[str, Any]) -> SearchSpace:
    """--space: a preset or spec file inside the SuperPLM's space, or `all` of it; by default all of it, or
    for a SuperPLM compressed from a pre-trained model, the part of it worth searching (`searched_part`)."""
    if requested == "all" or not requested and not meta.get("source"):
        return whole
    if not requested:
        return searched_part(whole)
    space = SearchSpace.load(requested)
    space.check_within(whole)
    return space


def run_search(cfg: SearchConfig) -> dict[str, Any] | None:
    """Run or resume a search; returns results.json's content on rank 0."""
    cfg.validate()
    comm, device = start_ranks()
    out_dir = Path(cfg.out_dir)
    model, meta, weights = load_weights(cfg.checkpoint, out_dir, comm, cfg.trust_checkpoint)
    cfg.adopt_fitness(meta)
    adopt_search_data(cfg, meta, comm.rank == 0)
    model = model.to(device).eval()
    space = searched_space(cfg.space, model.space, meta)
    seq_len = cfg.seq_len or int(meta.get("seq_len", 128))
    predictor = load_predictor(cfg.predictor, seq_len, cfg.runtime)
    oracle = LatencyOracle(predictor)
    targets = resolve_targets(cfg.targets, predictor, space, cfg.band(), oracle)
    fitness = build_fitness(cfg, model, meta, weights, device, out_dir, comm.rank)
    proposer = Proposer(cfg.method, cfg.evolution_settings(), space, targets, oracle, fitness.higher_is_better,
                        budget=cfg.budget)
    info = {"method": cfg.method, "fitness": {"name": fitness.name, "higher_is_better": fitness.higher_is_better},
            "settings": proposer.settings.to_dict(), "band": [cfg.band_low, cfg.band_high], "seed": cfg.seed,
            "space": space.name, "checkpoint": str(Path(cfg.checkpoint).resolve()), "checkpoint_step": meta.get("step"),
            "predictor": cfg.predictor, "latency_units": predictor.units,
            "runtime": getattr(predictor, "runtime", None), "config": asdict(cfg)}
    spec = LoopSpec(out_dir=out_dir, seed=cfg.seed, fingerprint=fingerprint(cfg, proposer, space.to_spec(), meta,
                                                                            fitness.name),
                    info=info, stop_after_generation=cfg.stop_after_generation, seq_len=seq_len,
                    vocab_size=model.config.vocab_size, progress=cfg.progress, plot=cfg.plot)
    state = run_search_loop(spec, proposer, fitness, comm)
    if state is None:
        return None
    return read_json(out_dir / "results.json", "search results")

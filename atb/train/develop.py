"""Efficient development: batch-extract K architectures from a SuperPLM and further-train them in one run.

    deepspeed --num_accelerators 2 tools/develop.py --supernet runs/pretrain/supernet \
        --archs L4_H256_A4_Q256_F1024,L2_H128_A2_Q128_F512 --steps 2000 --out_dir runs/develop

Same data pipeline, objectives, DeepSpeed configs, checkpoints, exact resume and tracking as pre-training
(the shared `session`); only the module (K students) and the export differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atb.data import dev_batches
from atb.deploy.runtime import check_same_runtime
from atb.latency import LatencyPredictor
from atb.model.extract import build_masked_lm, new_masked_lm
from atb.search import run_search
from atb.search.config import SearchConfig
from atb.search.fitness import load_kd_projection
from atb.search.outputs import read_results
from atb.space import Arch
from atb.train.config import DevelopConfig
from atb.train.consolidate import load_supernet_or_checkpoint
from atb.train.develop_export import check_latency_measurable, export_students
from atb.train.distributed import DistEnv, barrier, init_distributed
from atb.train.job import Job
from atb.train.objectives import Teacher
from atb.train.reconstruction import reconstruct_students, reconstruction_source
from atb.train.recorded_data import adopt_recorded_data
from atb.train.session import fill_ds_config, load_teacher, prepare_data, run_session
from atb.train.students import Students


DEVELOP_DATA_FIELDS = {"corpus": ("corpus", "demo"), "tokenizer": ("tokenizer", "demo"), "seq_len": ("seq_len", 128),
                       "dev_fraction": ("dev_fraction", 0.01), "seed": ("data_seed", 0)}


@dataclass(frozen=True)
class Pick:
    arch: Arch
    target: str | None = None
    predicted_ms: float | None = None


def picks_from_config(cfg: DevelopConfig, supernet) -> list[Pick]:
    if cfg.archs:
        picks = [Pick(Arch.parse(a)) for a in cfg.archs]
    elif cfg.results:
        picks = picks_from_results(Path(cfg.results))
    else:
        picks = picks_from_results(search_targets(cfg))
    for p in picks:
        supernet.space.validate(p.arch)
    names = [p.arch.name for p in picks]
    if len(set(names)) != len(names):
        raise ValueError(f"the same arch is listed twice: {names}")
    return picks


def search_targets(cfg: DevelopConfig) -> Path:
    """The paper's AutoTinyBERT-Fast search for --targets, run by all ranks (results reused on resume)."""
    out = Path(cfg.out_dir) / "search"
    run_search(SearchConfig(checkpoint=cfg.supernet, out_dir=str(out), targets=cfg.targets, predictor=cfg.predictor,
                            runtime=cfg.runtime,
                            method="fast", corpus=cfg.corpus, seq_len=cfg.seq_len, dev_fraction=cfg.dev_fraction,
                            data_seed=cfg.seed, seed=cfg.seed, progress=False))
    barrier()
    return out / "results.json"


def picks_from_results(path: Path) -> list[Pick]:
    unique: dict[str, Pick] = {}
    for entry in read_results(path):
        # several targets may pick the same arch: train it once, under the first target's name
        unique.setdefault(entry["arch"], Pick(Arch.parse(entry["arch"]), entry["target"], entry["predicted_ms"]))
    return list(unique.values())


def build_students(cfg: DevelopConfig, supernet, picks: list[Pick]) -> list[torch.nn.Module]:
    models = []
    for pick in picks:
        if cfg.from_scratch:
            models.append(new_masked_lm(pick.arch, supernet.config))
        else:
            models.append(build_masked_lm(supernet, pick.arch))
    for m in models:
        m.config.hidden_dropout_prob = m.config.attention_probs_dropout_prob = cfg.dropout
        for module in m.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = cfg.dropout
        _set_attention_dropout(m, cfg.dropout)
        m.train()
    return models


def _set_attention_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if hasattr(module, "dropout_p"):
            module.dropout_p = p


def train(cfg: DevelopConfig) -> dict[str, Any]:
    cfg.validate()
    predictor = LatencyPredictor.load(cfg.predictor) if cfg.predictor else None
    if predictor is not None and cfg.runtime:  # before training, not after: the export measures on this runtime
        check_same_runtime(predictor.runtime, cfg.runtime, f"latency predictor {cfg.predictor}")
    env = init_distributed()
    out = Path(cfg.out_dir)
    supernet, meta = load_supernet_or_checkpoint(cfg.supernet, cfg.trust_checkpoint)
    check_latency_measurable(cfg, predictor, supernet.config.max_position_embeddings)
    adopt_recorded_data(cfg, meta, DEVELOP_DATA_FIELDS, cfg.supernet, "develop", env.is_main)
    picks = picks_from_config(cfg, supernet)
    if cfg.objective == "auto":  # the SuperPLM's own objective, and its teacher when it was distilled
        cfg.objective = meta.get("objective", "mlm")
        cfg.teacher = cfg.teacher or (meta.get("teacher") if cfg.objective == "kd" else None)
        cfg.validate()
    tokenizer, blocks = prepare_data(cfg, env, out)
    if len(tokenizer) > supernet.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the SuperPLM vocab {supernet.config.vocab_size}")
    torch.manual_seed(cfg.seed)
    models = build_students(cfg, supernet, picks)
    rebuilt = refit_to_source(cfg, meta, models, blocks["train"], env)
    config = fill_ds_config(cfg, on_cpu=env.device.type == "cpu")
    teacher = load_teacher(cfg, env, config, tokenizer)
    module = Students(models, [p.arch for p in picks], cfg.objective, teacher.hidden_size if teacher else None,
                      inherited_projection(cfg, meta))

    dev = dev_batches(blocks["dev"], tokenizer, cfg.micro_batch, cfg.seed)
    record = {"students": [{"arch": p.arch.to_dict(), "target": p.target, "predicted_ms": p.predicted_ms,
                            "reconstruction": r} for p, r in zip(picks, rebuilt)], "supernet_config": supernet.config.to_dict(),
              "source_checkpoint": str(Path(cfg.supernet).resolve()), "source_step": meta.get("step"),
              "from_scratch": cfg.from_scratch, "objective": cfg.objective}
    job = DevelopJob(module, record, teacher, dev, env, cfg, tokenizer, predictor)
    return run_session(cfg, env, tokenizer, blocks, job, config)


def refit_to_source(cfg: DevelopConfig, meta: dict[str, Any], models: list[torch.nn.Module], blocks,
                    env: DistEnv) -> list[dict[str, Any] | None]:
    """Students sliced from a compressed SuperPLM, refitted to its source before training (one summary each;
    None where nothing was refitted: from scratch, or a SuperPLM that was not compressed from a checkpoint)."""
    source = reconstruction_source(meta)
    if not cfg.reconstruct or cfg.from_scratch or source is None:
        return [None] * len(models)
    if not Path(source).is_dir():
        raise FileNotFoundError(f"--reconstruct needs the SuperPLM's source {source}, which is gone; "
                                "pass --reconstruct false")
    return reconstruct_students(models, source, blocks, cfg.calib_samples, cfg.micro_batch, env)


def inherited_projection(cfg: DevelopConfig, meta: dict[str, Any]) -> torch.nn.Module | None:
    """The KD projection trained with the SuperPLM, when the students distil from the SuperPLM's own teacher
    (another teacher's hidden states live in another basis) and it is not the from-scratch comparison."""
    if cfg.objective != "kd" or cfg.from_scratch or not meta.get("teacher") or not cfg.teacher:
        return None
    if Path(cfg.teacher).resolve() != Path(meta["teacher"]).resolve():
        return None
    return load_kd_projection(cfg.supernet)


class DevelopJob(Job):
    """The K students' summed loss, their dev losses, and their export as Hugging Face folders."""

    name = "develop"

    def __init__(self, module: Students, record: dict[str, Any], teacher: Teacher | None, dev, env: DistEnv,
                 cfg: DevelopConfig, tokenizer, predictor: LatencyPredictor | None):
        super().__init__(module, record, teacher)
        self.dev, self.env, self.cfg, self.tokenizer, self.predictor = dev, env, cfg, tokenizer, predictor
        self.last_dev: dict[str, float] = {}  # the export's report shows the final evaluation

    def loss(self, engine, batch: dict[str, torch.Tensor], step: int):
        return engine(batch, self.teacher_outputs(batch))

    def evaluate(self, engine) -> dict[str, float]:
        self.last_dev = evaluate_students(engine, self.dev, self.teacher, self.env)
        return dict(self.last_dev)

    def export(self, engine, ckpt_dir: Path) -> None:
        if self.env.is_main:
            export_students(self.cfg, ckpt_dir, self.checkpoint_record, self.tokenizer,
                            Path(self.cfg.out_dir) / "models", self.last_dev, self.predictor)


@torch.no_grad()
def evaluate_students(engine, dev, teacher, env: DistEnv) -> dict[str, float]:
    """Dev loss per student (all ranks run it: ZeRO-3 gathers parameters collectively)."""
    engine.eval()
    sums: dict[str, float] = {}
    for batch in dev:
        batch = {k: v.to(env.device) for k, v in batch.items()}
        t_out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]) if teacher else None
        _, terms = engine(batch, t_out)
        for key, value in terms.items():
            if key.endswith("/loss"):
                sums[f"dev/{key}"] = sums.get(f"dev/{key}", 0.0) + float(value) / len(dev)
    engine.train()
    return sums

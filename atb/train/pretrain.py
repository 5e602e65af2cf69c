"""SuperPLM pre-training on DeepSpeed: the supernet, its per-micro-batch loss, and its export.

    deepspeed --num_accelerators 2 tools/pretrain.py --ds_config zero2_bf16 --steps 1000 ...
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from atb.data import dev_batches
from atb.fsutil import write_text_atomic
from atb.model.bert_source import declared_pooling, embedding_settings, has_pooler, read_config, source_dims
from atb.model.elastic import SuperBert, SuperBertConfig
from atb.model.pretrained_init import init_from_pretrained
from atb.model.supernet_io import is_supernet_folder, load_supernet, save_supernet, untied_state_dict
from atb.search.fitness import save_kd_projection
from atb.space import Arch, SearchSpace
from atb.train import compress
from atb.train.config import PretrainConfig
from atb.train.consolidate import load_deepspeed_supernet
from atb.train.distributed import DistEnv, init_distributed
from atb.train.job import Job
from atb.train.module import SuperPLMTrainModule
from atb.train.objectives import Teacher, check_teacher_fits
from atb.train.recorded_data import absolute_corpus
from atb.train.sampling import ArchSampler
from atb.train.session import fill_ds_config, load_teacher, prepare_data, run_session


def build_supernet(cfg: PretrainConfig, vocab_size: int, space: SearchSpace, source: Path | None = None) -> SuperBert:
    """A SuperBert over `space`, initialised from `source` (the ordered copy of a compressed model) or from
    --init_from, else at random."""
    pretrained = source or (cfg.init_from if compress.compresses(cfg) else None)
    config = read_config(pretrained) if pretrained else None
    # the ordered source's per-head bases put almost all of a score in a head's leading dims
    scale_dim = source_dims(config).head_dim if source is not None else None
    pooling = declared_pooling(cfg.init_from) if cfg.init_from else "cls"
    pooler = pooling == "cls" and bool(cfg.init_from) and has_pooler(source or cfg.init_from)
    settings = embedding_settings(config) if config else {}
    sb_cfg = SuperBertConfig(space=space.to_spec(), vocab_size=vocab_size, max_position_embeddings=cfg.max_positions,
                             hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
                             attention_scale_dim=scale_dim, classifier_pooling=pooling, pooler=pooler, **settings)
    model = SuperBert(sb_cfg)
    if source is not None:
        init_from_pretrained(model, source)
    elif cfg.init_from:
        if is_supernet_folder(Path(cfg.init_from)):  # continue from a SuperPLM (same space and vocab)
            source, _ = load_supernet(cfg.init_from)
            if source.config.space != sb_cfg.space or source.config.vocab_size != vocab_size:
                raise ValueError(f"--init_from {cfg.init_from}: its space/vocab differ from this run's "
                                 f"({source.space.name}, {source.config.vocab_size} vs {space.name}, {vocab_size})")
            model.config.classifier_pooling = source.config.classifier_pooling
            model.load_state_dict(untied_state_dict(source), strict=False)
        else:
            init_from_pretrained(model, cfg.init_from)
    return model


def train(cfg: PretrainConfig) -> dict[str, Any]:
    source = compress.resolve_defaults(cfg)
    cfg.validate()
    space = compress.resolve_space(cfg, source)
    if source:
        compress.preflight(cfg, space, source)
    env = init_distributed()
    out = Path(cfg.out_dir)
    tokenizer, blocks = prepare_data(cfg, env, out)
    if env.is_main:  # the resolved space, for the jobs that follow (latency measure --space <this file>)
        write_text_atomic(out / "space.yaml", yaml.safe_dump(space.to_spec(), sort_keys=False))
    ordered, source_is_teacher = None, False
    if source:
        if cfg.reorder == "importance":
            ordered = compress.order_for_run(cfg, env, out, blocks["train"], tokenizer, space, source)
        source_is_teacher = cfg.objective == "kd" and Path(cfg.teacher).resolve() == Path(cfg.init_from).resolve()
        if source_is_teacher:
            cfg.teacher = str(ordered or cfg.init_from)  # the source itself, in the supernet's unit order
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every re-run
    model = build_supernet(cfg, len(tokenizer), space, ordered)
    config = fill_ds_config(cfg, on_cpu=env.device.type == "cpu")
    teacher = load_teacher(cfg, env, config, tokenizer)
    if teacher is not None:
        check_teacher_fits(teacher, model)
    # a student sliced from the teacher's own ordered weights shares its hidden basis: start the projection
    # to the teacher's width at identity, so each sub-network's leading channels already match
    same_basis = teacher is not None and source is not None and source_is_teacher
    module = SuperPLMTrainModule(model, cfg.objective, teacher.hidden_size if teacher else None, cfg.inplace_distill,
                                 identity_projection=same_basis)
    fixed = tuple(Arch.parse(a) for a in cfg.fixed_archs)
    sampler = ArchSampler(model.space, cfg.sampling, cfg.seed, cfg.sandwich_random, fixed)

    dev = dev_batches(blocks["dev"], tokenizer, cfg.micro_batch, cfg.seed)
    record = {"supernet_config": model.config.to_dict(), "objective": cfg.objective,
              "tokenizer": str((out / "tokenizer").resolve()), "seq_len": cfg.seq_len,
              # what later jobs need to hold out exactly the same dev blocks
              "corpus": absolute_corpus(cfg.corpus), "dev_fraction": cfg.dev_fraction, "data_seed": cfg.seed,
              "teacher": str(Path(cfg.teacher).resolve()) if cfg.teacher else None, **compress.record(cfg, ordered)}
    job = PretrainJob(module, record, teacher, sampler, dev, env, out / "supernet")
    return run_session(cfg, env, tokenizer, blocks, job, config)


class PretrainJob(Job):
    """The sampled archs' loss each step, the dev loss of the largest and smallest arch, the SuperPLM export."""

    name = "pretrain"

    def __init__(self, module: SuperPLMTrainModule, record: dict[str, Any], teacher: Teacher | None,
                 sampler: ArchSampler, dev, env: DistEnv, export_folder: Path):
        super().__init__(module, record, teacher)
        self.sampler, self.dev, self.env, self.export_folder = sampler, dev, env, export_folder
        space = module.supernet.space
        self.dev_archs = [space.largest(), space.smallest()]

    def loss(self, engine, batch: dict[str, torch.Tensor], step: int):
        return engine(batch, self.sampler.archs_for_step(step), self.teacher_outputs(batch))

    def evaluate(self, engine) -> dict[str, float]:
        return evaluate_dev(engine, self.dev, self.dev_archs, self.teacher, self.env)

    def export(self, engine, ckpt_dir: Path) -> None:
        export_supernet(ckpt_dir, self.export_folder, self.env)

    def describe_step(self, step: int) -> dict[str, float]:
        arch = self.sampler.archs_for_step(step)[-1]
        return {f"arch/{k}": float(v) for k, v in arch.to_dict().items()}


@torch.no_grad()
def evaluate_dev(engine, dev, archs: list[Arch], teacher, env: DistEnv) -> dict[str, float]:
    """Dev loss of each arch, on every rank (ZeRO-3 needs all ranks in every forward)."""
    engine.eval()
    results = {}
    for arch in archs:
        total, count = 0.0, 0
        for batch in dev:
            batch = {k: v.to(env.device) for k, v in batch.items()}
            t_out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]) if teacher else None
            loss, _ = engine(batch, [arch], t_out)
            total, count = total + float(loss), count + 1
        results[f"dev/loss_{arch.name}"] = total / max(count, 1)
    engine.train()
    return results


def export_supernet(ckpt_dir: Path, folder: Path, env: DistEnv) -> None:
    """The final weights as a SuperPLM folder (fp32, any ZeRO stage) for search, extract and develop."""
    if env.is_main:
        model, meta = load_deepspeed_supernet(ckpt_dir)
        if folder.exists():
            warnings.warn(f"replacing the previous export {folder} with the newer step {meta['step']}")
        save_supernet(model, folder, meta=meta, overwrite=True)
        if meta.get("objective") == "kd":  # search and develop score sub-networks through the trained projection
            save_kd_projection(ckpt_dir, folder)

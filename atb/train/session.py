"""The training session every atb DeepSpeed job shares: data, engine, resume, loop, checkpoints, tracking.

A job (`job.Job`: pre-training the SuperPLM, developing K students) only supplies its module, its loss, its
evaluation and its export; everything that makes runs reproducible and resumable lives here once.

Rank 0 prepares shared artefacts first (trained tokenizer, tokenised blocks) and the other ranks read
them from the cache after a barrier, so N ranks never tokenise the corpus N times.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from atb.cli import config_record
from atb.data import build_blocks, check_vocab_compatible, load_corpus, load_tokenizer, make_batches, train_wordpiece
from atb.tracking import Tracker
from atb.train import checkpointing, completion, divergence, ds_config, litter
from atb.train.config import TrainConfig
from atb.train.distributed import DistEnv, barrier
from atb.train.job import Job
from atb.train.loop import LoopSpec, run_loop, truncate_metrics
from atb.train.objectives import Teacher
from atb.train.trusted_load import trusted_checkpoint

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def prepare_data(cfg: TrainConfig, env: DistEnv, out: Path):
    corpus = load_corpus(cfg.corpus)
    tok_dir = out / "tokenizer"
    if env.is_main:
        if cfg.train_tokenizer_vocab > 0 and not tok_dir.is_dir():
            train_wordpiece(corpus, cfg.train_tokenizer_vocab, tok_dir)
        tokenizer = load_tokenizer(str(tok_dir) if cfg.train_tokenizer_vocab > 0 else cfg.tokenizer)
        blocks = build_blocks(corpus, tokenizer, cfg.seq_len, cfg.dev_fraction, cfg.seed, cfg.num_proc,
                              cache_dir=cfg.data_cache or str(out / "data_cache"))
    barrier()
    if not env.is_main:
        tokenizer = load_tokenizer(str(tok_dir) if cfg.train_tokenizer_vocab > 0 else cfg.tokenizer)
        blocks = build_blocks(corpus, tokenizer, cfg.seq_len, cfg.dev_fraction, cfg.seed, cfg.num_proc,
                              cache_dir=cfg.data_cache or str(out / "data_cache"))
    return tokenizer, blocks


def fill_ds_config(cfg: TrainConfig, on_cpu: bool) -> dict[str, Any]:
    config = ds_config.load(cfg.ds_config, {
        "train_micro_batch_size_per_gpu": cfg.micro_batch, "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
        "warmup_max_lr": cfg.lr, "warmup_num_steps": min(cfg.warmup_steps, max(cfg.steps - 1, 1)),
        "total_num_steps": cfg.steps,
    })
    if on_cpu and ds_config.precision(config) == "fp16":
        raise ValueError(f"DeepSpeed config {cfg.ds_config} uses fp16, which DeepSpeed does not support on CPU; "
                         "use a bf16 or fp32 config here (fp16 is for GPUs)")
    return config


def find_resume_tag(cfg: TrainConfig, ckpt_dir: Path, env: DistEnv, config: dict[str, Any]) -> str | None:
    if cfg.resume == "never":
        if (ckpt_dir / checkpointing.LATEST).exists():
            raise FileExistsError(f"{ckpt_dir} already holds checkpoints and --resume never was given; "
                                  "use another --out_dir (existing checkpoints are never overwritten)")
        return None
    tag = checkpointing.latest_tag(ckpt_dir)
    if tag is None:
        if cfg.resume == "must":
            raise FileNotFoundError(f"--resume must: no checkpoint in {ckpt_dir}")
        return None
    saved_world = checkpointing.saved_world_size(ckpt_dir, tag)
    if saved_world != env.world_size:
        # DeepSpeed partitions optimizer state by rank; the universal format re-partitions it
        tag = checkpointing.ensure_universal(ckpt_dir, tag, env, cfg.trust_checkpoint)
        config.setdefault("checkpoint", {})["load_universal"] = True
    return tag


def load_teacher(cfg: TrainConfig, env: DistEnv, config: dict[str, Any], tokenizer) -> Teacher | None:
    if cfg.objective != "kd":
        return None
    teacher = Teacher.load(cfg.teacher, env.device, DTYPES[ds_config.precision(config)])
    check_vocab_compatible(tokenizer, teacher.vocab_size, f"teacher {cfg.teacher}")
    return teacher


def start_engine(job: Job, config: dict[str, Any], ckpt_dir: Path, tag: str | None, trust_checkpoint: bool):
    """The DeepSpeed engine over the job's module and the step it starts at: 0, or checkpoint `tag`'s."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=job.module, model_parameters=job.module.parameters(), config=config)
    if tag is None:
        return engine, 0
    with trusted_checkpoint(ckpt_dir / tag, trust_checkpoint):
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if client is None:
        raise checkpointing.CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    divergence.apply_configured_lr(engine)
    return engine, int(client["step"])


def run_session(cfg: TrainConfig, env: DistEnv, tokenizer, blocks, job: Job, config: dict[str, Any]) -> dict[str, Any]:
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    done = None if cfg.overwrite else completion.finished_summary(out, cfg.steps)
    if done is not None:
        completion.report_complete(job.name, out, f"a finished run of {cfg.steps} steps", env.is_main)
        return {"last_step": cfg.steps, "losses": {}, "eval": done.get("final_eval", {}),
                "digests": done.get("param_digest_per_rank", [])}
    if env.is_main:
        for action in litter.sweep(out):
            print(f"{job.name}: {action} (left by an interrupted run)")
    tag = find_resume_tag(cfg, ckpt_dir, env, config)
    engine, start_step = start_engine(job, config, ckpt_dir, tag, cfg.trust_checkpoint)
    record = {**config_record(cfg), "job": job.name, "ds_config": config, "world_size": env.world_size,
              "resumed_from": tag}
    tracker = Tracker(out, cfg.report_to, record, project=cfg.wandb_project, enabled=env.is_main)
    tracker.write_json("config.json" if tag is None else f"config.resume-{start_step}.json", record)
    metrics_file = out / "metrics.jsonl"
    if env.is_main:
        truncate_metrics(metrics_file, start_step)
        tokenizer.save_pretrained(str(out / "tokenizer"))

    batches = make_batches(blocks["train"], tokenizer, cfg.micro_batch, cfg.grad_accum, env.rank, env.world_size,
                           cfg.seed, start_step)

    def save(step: int) -> None:
        divergence.check_weights(engine, step, cfg.max_weight)
        checkpointing.save(engine, ckpt_dir, step, {"step": step, "run": dataclasses.asdict(cfg)}, cfg.keep_last, env,
                           record=job.checkpoint_record)

    spec = LoopSpec(steps=cfg.steps, start_step=start_step, stop_at_step=cfg.stop_at_step, grad_accum=cfg.grad_accum,
                    save_every=cfg.save_every, log_every=cfg.log_every, eval_every=cfg.eval_every, seed=cfg.seed)
    with divergence.naming_last_good(ckpt_dir):
        result = run_loop(engine, env, batches, job, spec, tracker, save, metrics_file)
    # a run resumed at its final step (killed during export) evaluates again: the exports need the figures
    final_eval = job.evaluate(engine) if result.last_step > start_step or result.last_step == cfg.steps else {}
    tracker.log(final_eval, result.last_step)
    if result.last_step == cfg.steps:
        barrier()
        job.export(engine, ckpt_dir)
        barrier()
    digests = rank_digests(engine)
    if len(set(digests)) != 1:
        warnings.warn(f"ranks hold different parameters after training: {digests}")
    tracker.write_json("summary.json", {"last_step": result.last_step, "final_eval": final_eval,
                                        "param_digest_per_rank": digests})
    tracker.close()
    return {"last_step": result.last_step, "losses": result.losses, "eval": final_eval, "digests": digests}


def rank_digests(engine) -> list[str]:
    """A fingerprint of the full parameters as each rank sees them: data parallelism is only correct if
    all ranks agree, and a silent divergence (e.g. a missed reduction) would otherwise go unnoticed."""
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        h = hashlib.sha256()
        for p in params:
            h.update(p.detach().float().cpu().numpy().tobytes())
        digest = h.hexdigest()[:16]
    gathered: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(gathered, digest)
    return gathered

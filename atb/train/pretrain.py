"""SuperPLM pre-training on DeepSpeed: set-up, resume, and the per-micro-batch loss.

    deepspeed --num_accelerators 2 tools/pretrain.py --ds_config zero2_bf16 --steps 1000 ...

Rank 0 prepares shared artefacts first (trained tokenizer, tokenised blocks) and the other ranks read
them from the cache after a barrier, so N ranks never tokenise the corpus N times.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from atb.cli import config_record
from atb.model.elastic import SuperBert, SuperBertConfig
from atb.space import Arch, SearchSpace
from atb.tracking import Tracker
from atb.train import checkpointing, ds_config
from atb.train.config import PretrainConfig
from atb.train.distributed import DistEnv, barrier, init_distributed
from atb.train.loop import LoopSpec, run_loop, truncate_metrics
from atb.train.module import SuperPLMTrainModule
from atb.train.objectives import Teacher, check_teacher_fits
from atb.train.sampling import ArchSampler


def prepare_data(cfg: PretrainConfig, env: DistEnv, out: Path):
    from atb.data import build_blocks, load_corpus, load_tokenizer, train_wordpiece

    corpus = load_corpus([c for c in cfg.corpus.split(",") if c] if "," in cfg.corpus else cfg.corpus)
    tok_dir = out / "tokenizer"
    if env.is_main:
        if cfg.train_tokenizer_vocab > 0 and not tok_dir.is_dir():
            train_wordpiece(corpus, cfg.train_tokenizer_vocab, tok_dir)
        tokenizer = load_tokenizer(str(tok_dir) if cfg.train_tokenizer_vocab > 0 else cfg.tokenizer)
        blocks = build_blocks(corpus, tokenizer, cfg.seq_len, cfg.dev_fraction, cfg.seed, cfg.num_proc,
                              cache_dir=str(out / "data_cache"))
    barrier()
    if not env.is_main:
        tokenizer = load_tokenizer(str(tok_dir) if cfg.train_tokenizer_vocab > 0 else cfg.tokenizer)
        blocks = build_blocks(corpus, tokenizer, cfg.seq_len, cfg.dev_fraction, cfg.seed, cfg.num_proc,
                              cache_dir=str(out / "data_cache"))
    return tokenizer, blocks


def build_supernet(cfg: PretrainConfig, vocab_size: int) -> SuperBert:
    space = SearchSpace.load(cfg.space)
    sb_cfg = SuperBertConfig(space=space.to_spec(), vocab_size=vocab_size, max_position_embeddings=cfg.max_positions,
                             hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
    model = SuperBert(sb_cfg)
    if cfg.init_from:
        from atb.model.pretrained_init import init_from_pretrained

        init_from_pretrained(model, cfg.init_from)
    return model


def fill_ds_config(cfg: PretrainConfig, on_cpu: bool) -> dict[str, Any]:
    config = ds_config.load(cfg.ds_config, {
        "train_micro_batch_size_per_gpu": cfg.micro_batch, "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
        "warmup_max_lr": cfg.lr, "warmup_num_steps": min(cfg.warmup_steps, max(cfg.steps - 1, 1)),
        "total_num_steps": cfg.steps,
    }, on_cpu=on_cpu)
    if on_cpu and ds_config.precision(config) == "fp16":
        raise ValueError(f"DeepSpeed config {cfg.ds_config} uses fp16, which DeepSpeed does not support on CPU; "
                         "use a bf16 or fp32 config here (fp16 is for GPUs)")
    return config


def find_resume_tag(cfg: PretrainConfig, ckpt_dir: Path, env: DistEnv, config: dict[str, Any]) -> str | None:
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
        tag = checkpointing.ensure_universal(ckpt_dir, tag, env)
        config.setdefault("checkpoint", {})["load_universal"] = True
    return tag


def train(cfg: PretrainConfig) -> dict[str, Any]:
    import deepspeed

    cfg.validate()
    env = init_distributed()
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    tokenizer, blocks = prepare_data(cfg, env, out)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and in every re-run
    model = build_supernet(cfg, vocab_size=len(tokenizer))
    config = fill_ds_config(cfg, on_cpu=env.device.type == "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[ds_config.precision(config)]

    teacher = None
    if cfg.objective == "kd":
        teacher = Teacher.load(cfg.teacher, env.device, dtype)
        check_teacher_fits(teacher, model)
    module = SuperPLMTrainModule(model, cfg.objective, teacher.hidden_size if teacher else None, cfg.inplace_distill)
    tag = find_resume_tag(cfg, ckpt_dir, env, config)
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=module.parameters(), config=config)
    start_step = 0
    if tag is not None:
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        if client is None:
            raise checkpointing.CheckpointError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
        start_step = int(client["step"])

    fixed = tuple(Arch.parse(a) for a in cfg.fixed_archs.split(";") if a.strip())
    sampler = ArchSampler(model.space, cfg.sampling, cfg.seed, cfg.sandwich_random, fixed)
    record = {**config_record(cfg), "ds_config": config, "world_size": env.world_size, "resumed_from": tag}
    tracker = Tracker(out, cfg.report_to, record, project=cfg.wandb_project, enabled=env.is_main)
    tracker.write_json("config.json" if tag is None else f"config.resume-{start_step}.json", record)
    metrics_file = out / "metrics.jsonl"
    if env.is_main:
        truncate_metrics(metrics_file, start_step)
        tokenizer.save_pretrained(str(out / "tokenizer"))

    from atb.data import dev_batches, make_batches

    batches = make_batches(blocks["train"], tokenizer, cfg.micro_batch, cfg.grad_accum, env.rank, env.world_size,
                           cfg.seed, start_step)

    def loss_fn(batch: dict[str, torch.Tensor], step: int):
        teacher_out = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]) if teacher else None
        return engine(batch, sampler.archs_for_step(step), teacher_out)

    def describe(step: int) -> dict[str, float]:
        arch = sampler.archs_for_step(step)[-1]
        return {f"arch/{k}": float(v) for k, v in arch.to_dict().items()}

    supernet_record = {"supernet_config": model.config.to_dict(), "tokenizer": str((out / "tokenizer").resolve()),
                       "objective": cfg.objective, "seq_len": cfg.seq_len}

    def save(step: int) -> None:
        checkpointing.save(engine, ckpt_dir, step, {"step": step, "run": dataclasses.asdict(cfg)}, cfg.keep_last, env,
                           record=supernet_record)

    dev = dev_batches(blocks["dev"], tokenizer, cfg.micro_batch, cfg.seed)

    def evaluate(step: int) -> dict[str, float]:
        return evaluate_dev(engine, dev, [model.space.largest(), model.space.smallest()], teacher, env)

    spec = LoopSpec(steps=cfg.steps, start_step=start_step, stop_at_step=cfg.stop_at_step, grad_accum=cfg.grad_accum,
                    save_every=cfg.save_every, log_every=cfg.log_every, eval_every=cfg.eval_every, seed=cfg.seed,
                    describe_step=describe)
    result = run_loop(engine, env, batches, loss_fn, spec, tracker, save, evaluate, metrics_file)
    final_eval = evaluate(result.last_step) if result.last_step > start_step else {}
    tracker.log(final_eval, result.last_step)
    if result.last_step == cfg.steps:
        export_supernet(ckpt_dir, out / "supernet", env)
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
    import hashlib

    import deepspeed
    import torch.distributed as dist

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        h = hashlib.sha256()
        for p in params:
            h.update(p.detach().float().cpu().numpy().tobytes())
        digest = h.hexdigest()[:16]
    gathered: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(gathered, digest)
    return gathered


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
    barrier()
    if env.is_main:
        from atb.model.supernet_io import save_supernet
        from atb.train.consolidate import load_deepspeed_supernet

        model, meta = load_deepspeed_supernet(ckpt_dir)
        if folder.exists():
            warnings.warn(f"replacing the previous export {folder} with the newer step {meta['step']}")
        save_supernet(model, folder, meta=meta, overwrite=True)
    barrier()

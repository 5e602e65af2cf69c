"""Pre-training from a pre-trained BERT-family folder: resolve the run's defaults, then importance on
calibration batches and the importance-ordered copy of the source that the SuperPLM and its teacher start from.

Leading sub-matrices are only good sub-networks once the most important heads, neurons and channels come
first; the ordered copy computes the same function as the source, so with the space derived from the source
the largest sub-network *is* the source, and distillation from it (the default objective) trains the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from atb.data import load_tokenizer
from atb.data.loader import masked_batches
from atb.data.tokenizer import has_vocabulary
from atb.model.bert_source import SourceDims, build_model, content_hash, has_mlm_head, read_config, source_dims
from atb.model.ffn_order import compute_ffn_orders
from atb.model.head_basis import compute_head_bases
from atb.model.importance import compute_importance
from atb.model.ordering import IMPORTANCE_FILE, read_importance, write_importance, write_ordered_folder
from atb.model.supernet_io import is_supernet_folder
from atb.source_space import check_within, space_from_source
from atb.space import SearchSpace
from atb.train.config import PretrainConfig
from atb.train.distributed import DistEnv, barrier, sum_over_ranks

log = logging.getLogger(__name__)
ORDERED_DIR = "source_ordered"


@dataclass
class Source:
    """The pre-trained folder a run compresses, read once: its config and shape, and its content hash (a
    pass over the weights) on first use."""

    path: Path
    config: dict[str, Any]
    dims: SourceDims

    @classmethod
    def read(cls, folder: str | Path) -> "Source":
        config = read_config(folder)
        return cls(Path(folder), config, source_dims(config))

    @cached_property
    def content_hash(self) -> str:
        return content_hash(self.path)


def compresses(cfg: PretrainConfig) -> bool:
    """Whether this run shrinks a transformers folder (rather than starting from scratch or a SuperPLM)."""
    return bool(cfg.init_from) and not is_supernet_folder(Path(cfg.init_from))


def resolve_defaults(cfg: PretrainConfig) -> Source | None:
    """Fill the `auto` fields: compression runs default to the source's space, tokenizer, importance order
    and distillation from the source; other runs keep the from-scratch defaults. Returns the source read
    (None when the run does not compress one)."""
    source = Source.read(cfg.init_from) if compresses(cfg) else None
    if source:
        if cfg.train_tokenizer_vocab > 0:
            raise ValueError("--train_tokenizer_vocab cannot be used with --init_from a pre-trained model: "
                             "its embeddings belong to its own tokenizer")
        if cfg.tokenizer == "auto":
            has_tokenizer = has_vocabulary(cfg.init_from)
            cfg.tokenizer = cfg.init_from if has_tokenizer else "demo"
        if cfg.max_positions == 0:
            cfg.max_positions = source.dims.max_positions
    cfg.tokenizer = "demo" if cfg.tokenizer == "auto" else cfg.tokenizer
    cfg.max_positions = cfg.max_positions or 512
    if cfg.space == "auto":
        cfg.space = "from_model" if source else "demo"
    if cfg.reorder == "auto":
        cfg.reorder = "importance" if source else "none"
    if cfg.objective == "auto":
        cfg.objective = "kd" if source else "mlm"
    if source and cfg.objective == "kd" and not cfg.teacher:
        cfg.teacher = cfg.init_from  # the source teaches (in the supernet's unit order: see pretrain.train)
    if cfg.space == "from_model" and not source:
        raise ValueError("--space from_model needs --init_from <a BERT-family transformers folder>")
    if cfg.reorder == "importance" and not source:
        raise ValueError("--reorder importance needs --init_from <a BERT-family transformers folder>")
    return source


def resolve_space(cfg: PretrainConfig, source: Source | None) -> SearchSpace:
    """The run's space: a preset or file, or (from_model, compression runs only) derived from the source."""
    if cfg.space != "from_model":
        space = SearchSpace.load(cfg.space)
    else:  # resolve_defaults refused from_model without a source
        d = source.dims
        space = SearchSpace.from_spec(space_from_source(d.layers, d.hidden, d.heads, d.qkv, d.ffn,
                                                        cfg.hidden_step, cfg.ffn_step, cfg.head_dim_step))
    if source:
        d = source.dims
        check_within(space, d.layers, d.hidden, d.heads, d.qkv, d.ffn, cfg.init_from)
    return space


def preflight(cfg: PretrainConfig, space: SearchSpace, source: Source) -> None:
    """The checks that must fail before anything is written: the tokenizer fits the source, and an existing
    importance file was computed for this source, space and estimator."""
    check_tokenizer(cfg, load_tokenizer(cfg.tokenizer), source)
    path = importance_path(cfg, Path(cfg.out_dir))
    if cfg.reorder == "importance" and path.is_file():
        read_importance(path, source.content_hash, space.to_spec(), cfg.importance, source.dims)


def importance_path(cfg: PretrainConfig, out: Path) -> Path:
    return Path(cfg.importance_file) if cfg.importance_file else out / IMPORTANCE_FILE


def check_tokenizer(cfg: PretrainConfig, tokenizer, folder: Source) -> None:
    """The run's tokenizer must be the one the source was trained with: same vocabulary, same ids."""
    source, vocab_size = folder.path, folder.dims.vocab_size
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer} has {len(tokenizer)} tokens but the source {source} has a "
                         f"vocab of {vocab_size}: use the source's own tokenizer (--tokenizer {source})")
    if Path(cfg.tokenizer).resolve() != source.resolve() and has_vocabulary(source):
        if load_tokenizer(str(source)).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"tokenizer {cfg.tokenizer} does not match the source {source}'s vocabulary; "
                             f"use the source's own (--tokenizer {source})")


def calibration_batches(blocks, tokenizer, samples: int, batch_size: int, seed: int,
                        env: DistEnv) -> list[dict[str, torch.Tensor]]:
    """The first `samples` training blocks (with fixed masks, for the Taylor loss): this rank's share."""
    mine = list(range(env.rank, min(samples, len(blocks)), env.world_size))
    batches = masked_batches(blocks, tokenizer, mine, batch_size, seed, "calibration")
    return [{k: v.to(env.device) for k, v in b.items()} for b in batches]


def ordered_source(source: Source, out: Path, importance_file: Path, estimator: str, space: SearchSpace,
                   batches: list[dict[str, torch.Tensor]], env: DistEnv, calibration: dict[str, Any]) -> Path:
    """`importance_file` (reused when it fits this source, space and estimator, else computed from this rank's
    calibration `batches` and written) and `out`/source_ordered, the source with its units in that order."""
    spec = space.to_spec()
    if importance_file.is_file():
        _, order = read_importance(importance_file, source.content_hash, spec, estimator, source.dims)
        log.info("reusing importance orders from %s", importance_file)
    else:
        with_head = estimator == "taylor" and has_mlm_head(source.path)
        model = build_model(source.path, source.config, with_mlm_head=with_head).to(env.device)
        importance = compute_importance(model, batches, source.dims, estimator, sum_over_ranks)
        order = importance.order().with_head_bases(compute_head_bases(model, batches, source.dims, sum_over_ranks))
        if estimator == "activation":
            order = order.with_ffn_orders(compute_ffn_orders(model, batches, source.dims, sum_over_ranks))
        if env.is_main:
            write_importance(importance_file, importance, order, source.path, source.content_hash, spec,
                             {**calibration, "samples": importance.samples})
        barrier()
    dest = out / ORDERED_DIR
    if env.is_main:
        write_ordered_folder(source.path, order, dest, importance_file)
    barrier()
    return dest


def order_for_run(cfg: PretrainConfig, env: DistEnv, out: Path, blocks, tokenizer, space: SearchSpace,
                  source: Source) -> Path:
    """`ordered_source` with the pre-training run's calibration settings."""
    path = importance_path(cfg, out)
    batches = [] if path.is_file() else calibration_batches(blocks, tokenizer, cfg.calib_samples, cfg.micro_batch,
                                                            cfg.seed, env)
    return ordered_source(source, out, path, cfg.importance, space, batches, env,
                          {"seq_len": cfg.seq_len, "corpus": cfg.corpus, "seed": cfg.seed})


def record(cfg: PretrainConfig, ordered: Path | None) -> dict[str, Any]:
    """What the run's checkpoint record says about compression (later jobs read the teacher from it)."""
    if not compresses(cfg):
        return {}
    return {"source": str(Path(cfg.init_from).resolve()), "reorder": cfg.reorder,
            "importance_estimator": cfg.importance if ordered else None,
            "ordered_source": str(ordered.resolve()) if ordered else None}

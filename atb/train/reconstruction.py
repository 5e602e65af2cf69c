"""Develop's first step for a compressed SuperPLM: each student's output projections and LayerNorms refitted to
the source.

The source is the SuperPLM's own (its importance-ordered copy when it was reordered), so a student's units
line up with the source's. A student's last layer is fitted to the source's last layer, as KD matches them.
Calibration blocks are the first training blocks, unmasked and unpadded; every fourth only judges whether a
fit is kept. Ranks split the blocks and sum the normal equations, so every rank
computes the same weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from atb.model.bert_source import build_model, read_config
from atb.model.reconstruct import BLOCKS, Calibration, reconstruct
from atb.train.config import HELD_OUT_EVERY
from atb.train.distributed import DistEnv, sum_over_ranks

log = logging.getLogger(__name__)


def reconstruction_source(meta: dict[str, Any]) -> str | None:
    """The checkpoint a SuperPLM was compressed from, in the SuperPLM's unit order (None: from scratch)."""
    return meta.get("ordered_source") or meta.get("source")


def unmasked_batches(blocks, positions: list[int], batch_size: int,
                     device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Blocks at `positions` as they are (no MLM masking, no padding), batched in that order."""
    rows = blocks.with_format("torch")
    batches = []
    for first in range(0, len(positions), batch_size):
        ids = rows[positions[first:first + batch_size]]["input_ids"].long().to(device)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                        "token_type_ids": torch.zeros_like(ids)})
    return batches


def reconstruct_students(models: list[torch.nn.Module], source: str, blocks, samples: int, batch_size: int,
                         env: DistEnv) -> list[dict[str, Any]]:
    """Refit every student in place against `source` on this rank's share of the first `samples` blocks;
    returns one summary per student for its record."""
    count = min(samples, len(blocks))
    judge = [p for p in range(count) if p % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    fit = [p for p in range(count) if p % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    mine_fit, mine_judge = fit[env.rank::env.world_size], judge[env.rank::env.world_size]
    batches = (unmasked_batches(blocks, mine_fit, batch_size, env.device)
               + unmasked_batches(blocks, mine_judge, batch_size, env.device))
    held_out = [False] * -(-len(mine_fit) // batch_size) + [True] * -(-len(mine_judge) // batch_size)
    model = build_model(source, read_config(source)).to(env.device)
    calibration = Calibration.from_source(model, batches, held_out)
    del model
    summaries = []
    for student in models:
        student.to(env.device)
        fits = reconstruct(student, calibration, last_to_last=True, reduce=sum_over_ranks)
        student.cpu()
        summary = {"source": str(Path(source).resolve()), "calib_samples": count}
        for kind, chosen in (("projections", [f for f in fits if f.block in BLOCKS]),
                             ("layer_norms", [f for f in fits if f.block not in BLOCKS])):
            summary[kind] = {"refitted": sum(f.replaced for f in chosen), "of": len(chosen),
                             "held_out_error_before": round(sum(f.error_before for f in chosen) / len(chosen), 4),
                             "held_out_error_after": round(sum(f.error_after for f in chosen) / len(chosen), 4)}
            log.info("reconstructed %s: %d of %d %s refitted, mean held-out error %.3f -> %.3f",
                     type(student).__name__, summary[kind]["refitted"], len(chosen), kind.replace("_", " "),
                     summary[kind]["held_out_error_before"], summary[kind]["held_out_error_after"])
        summaries.append(summary)
    return summaries

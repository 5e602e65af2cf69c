"""A diverging run stops before it saves poisoned weights, and says which checkpoint is the last good one.

The loss guard in the loop sees a non-finite loss only one step after the update that caused it, so a
save in between would keep weights that are already non-finite or huge. Before every save the weights are
checked as well (on every rank, on its own ZeRO partition), and a failure names the checkpoint to resume
from with a lower --lr.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from atb.train.checkpointing import CheckpointError, latest_tag


class Diverged(ValueError):
    pass


def largest_weight(engine) -> float:
    """max |w| over every parameter this rank holds (inf if any is non-finite), maximised over ranks."""
    peak = torch.zeros((), dtype=torch.float32)
    for p in engine.module.parameters():
        local = getattr(p, "ds_tensor", p)  # under ZeRO-3 a rank holds its partition in ds_tensor
        if local.numel():
            values = local.detach().float()
            peak = torch.maximum(peak, values.abs().max().cpu() if torch.isfinite(values).all()
                                 else torch.tensor(math.inf))
    if dist.is_initialized() and dist.get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else peak.device
        peak = peak.to(device)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return float(peak)


def check_weights(engine, step: int, bound: float) -> None:
    """Raise Diverged when the weights after `step` are non-finite or beyond `bound` (0 disables the bound)."""
    peak = largest_weight(engine)
    if not math.isfinite(peak) or (bound > 0 and peak > bound):
        raise Diverged(f"the weights after step {step} are {'not finite' if not math.isfinite(peak) else 'huge'} "
                       f"(max |w| = {peak:.3g}, bound --max_weight {bound:g}): the run diverged and step {step} "
                       "was not saved; re-run with a lower --lr or stronger clipping (--grad_clip)")


def apply_configured_lr(engine) -> None:
    """After loading a checkpoint, use this run's --lr schedule, not the lr the optimizer state carried:
    a re-run after a divergence must take the lower lr from its first step (same lr: same value)."""
    scheduler = engine.lr_scheduler
    if scheduler is not None and hasattr(scheduler, "last_batch_iteration"):
        scheduler.step(scheduler.last_batch_iteration)


def last_good(ckpt_dir: Path) -> str:
    try:
        tag = latest_tag(ckpt_dir)
    except CheckpointError:
        tag = None
    if tag is None:
        return "no checkpoint was saved before it, so a re-run starts from the beginning"
    return f"the last good checkpoint is {ckpt_dir / tag}, which a re-run in the same --out_dir resumes from"


@contextmanager
def naming_last_good(ckpt_dir: Path) -> Iterator[None]:
    """Add the checkpoint to resume from to a divergence error raised inside."""
    try:
        yield
    except Diverged as err:
        raise Diverged(f"{err}; {last_good(ckpt_dir)}") from None

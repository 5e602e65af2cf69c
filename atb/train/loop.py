"""The optimisation loop shared by SuperPLM pre-training and multi-student development.

Exact resume without saving RNG state: dropout randomness is reseeded from (seed, step, rank) at every
step, arch sampling is a function of (seed, step) and MLM masks a function of the sample, so a run stopped
at step k and resumed replays nothing and computes exactly what the uninterrupted run computes.
"""

from __future__ import annotations

import hashlib
import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from atb.fsutil import write_text_atomic
from atb.tracking import Tracker, progress
from atb.train.distributed import DistEnv
from atb.train.divergence import Diverged
from atb.train.job import Job


def step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class LoopSpec:
    steps: int
    start_step: int
    stop_at_step: int
    grad_accum: int
    save_every: int
    log_every: int
    eval_every: int
    seed: int


@dataclass
class LoopResult:
    last_step: int
    losses: dict[int, float]


def run_loop(engine, env: DistEnv, batches: Iterator[dict[str, torch.Tensor]], job: Job, spec: LoopSpec,
             tracker: Tracker, save: Callable[[int], None], metrics_file: Path) -> LoopResult:
    end = min(spec.steps, spec.stop_at_step) if spec.stop_at_step > 0 else spec.steps
    losses: dict[int, float] = {}
    bar = progress(end, env.is_main, job.name, initial=spec.start_step)
    tokens, t0 = 0, time.perf_counter()
    step = spec.start_step
    for step in range(spec.start_step, end):
        torch.manual_seed(step_seed(spec.seed, step, env.rank))
        engine.train()
        totals: dict[str, torch.Tensor] = {}
        for _ in range(spec.grad_accum):
            batch = {k: v.to(env.device, non_blocking=True) for k, v in next(batches).items()}
            loss, terms = job.loss(engine, batch, step)
            engine.backward(loss)
            engine.step()
            tokens += int(batch["attention_mask"].sum())
            for name, value in {"loss": loss.detach().float(), **terms}.items():
                totals[name] = totals.get(name, 0.0) + value / spec.grad_accum
        done = step + 1
        values = _mean_over_ranks(totals)
        losses[done] = values["loss"]
        bar.update(1)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        if done % spec.log_every == 0 or done == end:
            elapsed = time.perf_counter() - t0
            metrics = {f"train/{k}": v for k, v in values.items()}
            metrics.update({"train/lr": engine.get_lr()[0], "perf/tokens_per_s": tokens * env.world_size / elapsed,
                            "perf/max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
            if env.device.type == "cuda":
                metrics["perf/max_mem_gb"] = torch.cuda.max_memory_allocated(env.device) / 2**30
            metrics.update(job.describe_step(step))
            tracker.log(metrics, done)
            tokens, t0 = 0, time.perf_counter()
        if env.is_main:
            with metrics_file.open("a") as fh:
                fh.write(json.dumps({"step": done, **values}) + "\n")
        if not math.isfinite(values["loss"]):  # the same mean on every rank: all stop together
            raise Diverged(f"the training loss is {values['loss']} at step {done}: the run diverged and nothing "
                           f"was saved from this step on; re-run with a lower --lr or stronger clipping (--grad_clip)")
        if spec.eval_every and done % spec.eval_every == 0 and done != end:
            tracker.log(job.evaluate(engine), done)
        if done % spec.save_every == 0 or done == end:
            save(done)
    bar.close()
    return LoopResult(last_step=end, losses=losses)


def _mean_over_ranks(totals: dict[str, Any]) -> dict[str, float]:
    names = sorted(totals)
    vec = torch.stack([torch.as_tensor(totals[n], dtype=torch.float32).cpu() for n in names])
    if dist.is_initialized() and dist.get_world_size() > 1:
        vec = vec.to(_comm_device())
        dist.all_reduce(vec)
        vec = vec.cpu() / dist.get_world_size()
    return {n: float(v) for n, v in zip(names, vec)}


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def truncate_metrics(metrics_file: Path, from_step: int) -> None:
    """On resume, forget logged steps after the checkpoint (they will be recomputed identically)."""
    if not metrics_file.is_file():
        return
    lines = [line for line in metrics_file.read_text(errors="replace").splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, start=1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break  # the last line was torn by a kill mid-write: it is recomputed
            raise ValueError(f"{metrics_file} line {number} is corrupt ({line[:60]!r}); delete that line") from None
        if step <= from_step:
            kept.append(line)
    write_text_atomic(metrics_file, "".join(line + "\n" for line in kept))

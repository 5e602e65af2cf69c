"""The training loop's own guard: a diverged run stops with a clear error and saves nothing from then on.

bf16 configs run without DeepSpeed's per-gradient overflow scan (it cost ~10 ms a step on an H100,
bench/RESULTS.md), so a non-finite loss is what must stop the run."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from atb.tracking import Tracker
from atb.train.distributed import DistEnv
from atb.train.job import Job
from atb.train.loop import LoopSpec, run_loop


class _PlainEngine:
    """What run_loop asks of a DeepSpeed engine, over a torch optimizer."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def train(self) -> None:
        self.model.train()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.opt.step()
        self.opt.zero_grad()

    def get_lr(self) -> list[float]:
        return [0.1]


class _SquareJob(Job):
    name = "square"

    def __init__(self, model: torch.nn.Module, diverge_at: int | None):
        super().__init__(model, {}, teacher=None)
        self.diverge_at = diverge_at

    def loss(self, engine, batch, step):
        loss = self.module(batch["x"]).pow(2).mean()
        if self.diverge_at is not None and step + 1 >= self.diverge_at:
            loss = loss * float("nan")
        return loss, {}

    def evaluate(self, engine):
        return {}


def _run(tmp_path, diverge_at: int | None, saved: list[int]):
    model = torch.nn.Linear(4, 1)
    engine = _PlainEngine(model)
    batches = itertools.repeat({"x": torch.ones(2, 4), "attention_mask": torch.ones(2, 4)})

    spec = LoopSpec(steps=6, start_step=0, stop_at_step=0, grad_accum=1, save_every=2, log_every=1, eval_every=0,
                    seed=0)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    tracker = Tracker(tmp_path, ["none"], {}, enabled=False)
    result = run_loop(engine, env, batches, _SquareJob(model, diverge_at), spec, tracker, saved.append,
                      tmp_path / "metrics.jsonl")
    return result


def test_a_finite_run_saves_on_schedule(tmp_path):
    saved: list[int] = []
    result = _run(tmp_path, diverge_at=None, saved=saved)
    assert saved == [2, 4, 6] and result.last_step == 6
    assert result.losses[6] < result.losses[1]


def test_a_non_finite_loss_stops_the_run_before_saving_it(tmp_path):
    saved: list[int] = []
    with pytest.raises(ValueError, match="loss is nan at step 3: the run diverged"):
        _run(tmp_path, diverge_at=3, saved=saved)
    assert saved == [2]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # the bad step is logged for the post-mortem

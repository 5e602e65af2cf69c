"""Run directory, TensorBoard and Weights & Biases.

Only rank 0 tracks. W&B runs offline unless the user sets WANDB_MODE=online (it must never block a
cluster job on network), and a W&B failure degrades to a warning rather than killing training.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

from atb.fsutil import write_json_atomic

REPORTERS = ("tensorboard", "wandb", "none")


def parse_report_to(report_to: list[str]) -> list[str]:
    bad = [i for i in report_to if i not in REPORTERS]
    if bad:
        raise ValueError(f"unknown --report_to value(s) {bad}; choose from {REPORTERS}")
    return [i for i in report_to if i != "none"]


class Tracker:
    def __init__(self, run_dir: str | Path, report_to: list[str], config: dict[str, Any],
                 project: str = "atb", enabled: bool = True, run_name: str | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.reporters = parse_report_to(report_to)
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in self.reporters:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if "wandb" in self.reporters:
            self._wandb = self._start_wandb(project, run_name or self.run_dir.name, config)

    def _start_wandb(self, project: str, name: str, config: dict[str, Any]):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        if os.environ["WANDB_MODE"] == "disabled":
            return None
        try:
            import wandb

            return wandb.init(project=project, name=name, config=config, dir=str(self.run_dir),
                              settings=wandb.Settings(init_timeout=60, console="off"))
        except Exception as err:  # a tracking outage must not stop training
            warnings.warn(f"W&B could not start ({err}); continuing with the other reporters")
            return None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        if self._tb is not None:
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def write_json(self, name: str, data: Any) -> None:
        if self.enabled:
            write_json_atomic(self.run_dir / name, data)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def progress(iterable_or_total, enabled: bool, desc: str, initial: int = 0):
    """A tqdm bar on rank 0 only (stderr); other ranks get a silent stand-in."""
    from tqdm.auto import tqdm

    total = iterable_or_total if isinstance(iterable_or_total, int) else None
    iterable = None if isinstance(iterable_or_total, int) else iterable_or_total
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0)

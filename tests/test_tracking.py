"""TensorBoard and W&B logging: offline by default, never blocking, rank 0 only."""

from __future__ import annotations

import pytest

from atb.tracking import Tracker, parse_report_to


def test_tensorboard_and_offline_wandb_write_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    tracker = Tracker(tmp_path / "run", ["tensorboard", "wandb"], {"lr": 0.1}, project="atb-test")
    for step in range(1, 4):
        tracker.log({"train/loss": 1.0 / step}, step)
    tracker.close()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "run").rglob("offline-run-*")), "W&B did not write an offline run"


def test_non_main_ranks_write_nothing(tmp_path):
    tracker = Tracker(tmp_path / "run", ["tensorboard"], {}, enabled=False)
    tracker.log({"x": 1.0}, 1)
    tracker.close()
    assert not (tmp_path / "run").exists()


def test_unknown_reporter_is_rejected():
    assert parse_report_to(["none"]) == []
    with pytest.raises(ValueError, match="unknown --report_to value"):
        parse_report_to(["tensorboard", "mlflow"])

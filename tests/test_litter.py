"""Start-up removes what a killed run left inside out_dir (atb's own temp names and half-deleted
checkpoints), puts back a copy that was moved aside, and touches nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from atb.train.checkpointing import COMPLETE, LATEST
from atb.train.litter import sweep


def checkpoint(ckpt: Path, tag: str, complete: bool = True) -> None:
    (ckpt / tag).mkdir(parents=True)
    (ckpt / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (ckpt / tag / COMPLETE).write_text(json.dumps({"files": {}}))


def test_sweep_removes_only_atb_litter_inside_out_dir(tmp_path):
    out, outside = tmp_path / "run", tmp_path / "elsewhere"
    ckpt = out / "checkpoints"
    checkpoint(ckpt, "step00000002", complete=False)  # a prune killed midway
    checkpoint(ckpt, "step00000004")
    checkpoint(ckpt, "step00000006", complete=False)  # a save killed before its record
    (ckpt / LATEST).write_text("step00000004")
    (ckpt / ".latest.k2j4h5g6.tmp").write_text("step0")
    (out / ".supernet.a1b2c3d4.tmp").mkdir()
    (out / ".supernet.a1b2c3d4.tmp" / "model.safetensors").write_bytes(b"half")
    (out / "models").mkdir()
    (out / "models" / ".L2_H64.old").mkdir()  # killed between the two renames of publish_dir
    (out / "models" / ".L2_H64.old" / "config.json").write_text("{}")
    outside.mkdir()
    (outside / ".notes.abcdefgh.tmp").write_text("mine")
    (out / "my.partial.tmp").write_text("a user's file, not an atb name")
    (out / ".hidden").write_text("a user's file")
    (out / "link.abcdefgh.tmp").symlink_to(outside)
    (out / ".linked.abcdefgh.tmp").symlink_to(outside)

    done = sweep(out)
    assert sorted(p.name for p in ckpt.iterdir()) == [LATEST, "step00000004"]
    assert not (out / ".supernet.a1b2c3d4.tmp").exists()
    assert (out / "models" / "L2_H64" / "config.json").is_file() and not (out / "models" / ".L2_H64.old").exists()
    assert (outside / ".notes.abcdefgh.tmp").read_text() == "mine"
    assert (out / "my.partial.tmp").is_file() and (out / ".hidden").is_file()
    assert (out / ".linked.abcdefgh.tmp").is_symlink() and (out / "link.abcdefgh.tmp").is_symlink()
    assert len(done) == 5 and sweep(out) == []


def test_a_damaged_latest_leaves_every_checkpoint_in_place(tmp_path):
    ckpt = tmp_path / "checkpoints"
    checkpoint(ckpt, "step00000002", complete=False)
    (ckpt / LATEST).write_text("../../somewhere")
    assert sweep(tmp_path) == [] and (ckpt / "step00000002").is_dir()

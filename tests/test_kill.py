"""kill -9 a 2-rank pre-training at random moments and while it saves: every re-run resumes, `latest` never
names an incomplete checkpoint, and the final weights equal an uninterrupted run's.

ATB_KILLS sets the number of kills (default 20; the issue's figure). Slow: minutes per run on 2 cores.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launching import PYTHON, REPO, free_port, tiny_pretrain_args, tool_env

pytestmark = pytest.mark.slow


def launch(args: list, log: Path) -> subprocess.Popen:
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "tools" / "pretrain.py"), *map(str, args)]
    with log.open("a") as fh:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(cmd, stdout=fh, stderr=fh, env=tool_env(2), cwd=REPO, start_new_session=True)


def saving(ckpt: Path) -> bool:
    """A step folder exists without its completion record: a save is under way."""
    return ckpt.is_dir() and any(p.name.startswith("step") and not p.name.endswith("_universal")
                                 and not (p / "atb_complete.json").exists() for p in ckpt.iterdir() if p.is_dir())


def latest_text(ckpt: Path) -> str | None:
    latest = ckpt / "latest"
    return latest.read_text() if latest.is_file() else None


def kill_run(args: list, ckpt: Path, rng: random.Random, during_save: bool, log: Path) -> bool | None:
    """Start a run and kill -9 its whole process group once it has saved something new: as soon as a save
    is seen under way (`during_save`), else at a random moment up to a second after `latest` moved. None
    when it finished before the kill, else whether a save was under way when the kill landed."""
    proc = launch(args, log)
    before, deadline = latest_text(ckpt), None
    while proc.poll() is None:
        if during_save and saving(ckpt):
            break
        if deadline is None and latest_text(ckpt) != before:
            deadline = time.monotonic() + rng.uniform(0.0, 1.0)
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    if proc.poll() is not None:
        assert proc.returncode == 0, log.read_text()[-3000:]
        return None
    in_save = saving(ckpt)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return in_save


def test_kill_9_at_random_moments_and_during_saves_resumes_to_identical_weights(tmp_path):
    from atb.train.checkpointing import latest_tag

    kills = int(os.environ.get("ATB_KILLS", "20"))
    # enough steps that every asked kill lands before the run can finish
    schedule = {"steps": max(12, 8 * kills), "save_every": 2, "keep_last": 2, "ds_config": "zero2_fp32"}
    reference = tmp_path / "reference"
    started = time.monotonic()
    log = tmp_path / "runs.log"
    assert launch(tiny_pretrain_args(tmp_path, reference, **schedule), log).wait() == 0, log.read_text()[-3000:]
    run_s = time.monotonic() - started
    out = tmp_path / "killed"
    args = tiny_pretrain_args(tmp_path, out, **schedule)
    rng = random.Random(0)
    done_kills = in_saves = 0
    for i in range(kills):
        landed = kill_run(args, out / "checkpoints", rng, during_save=i % 2 == 1, log=log)
        if landed is None:
            break
        done_kills += 1
        in_saves += landed
        latest_tag(out / "checkpoints")  # raises if `latest` names an incomplete or corrupt checkpoint
    assert launch(args, log).wait() == 0, log.read_text()[-3000:]
    assert done_kills >= min(kills, 1)
    weights = "supernet/model.safetensors"
    assert (out / weights).read_bytes() == (reference / weights).read_bytes()
    print(f"KILLS {done_kills} of {kills} ({in_saves} during a save) resumed to identical weights; "
          f"uninterrupted run {run_s:.0f} s")

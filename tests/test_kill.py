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


def kill_run(args: list, ckpt: Path, rng: random.Random, during_save: bool, limit_s: float, log: Path) -> bool:
    """Start a run and kill -9 its whole process group; False when it finished before the kill."""
    proc = launch(args, log)
    deadline = time.monotonic() + (limit_s if during_save else rng.uniform(0.1, 0.7) * limit_s)
    while time.monotonic() < deadline and proc.poll() is None:
        if during_save and saving(ckpt):
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        assert proc.returncode == 0, log.read_text()[-3000:]
        return False
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def test_kill_9_at_random_moments_and_during_saves_resumes_to_identical_weights(tmp_path):
    from atb.train.checkpointing import latest_tag

    kills = int(os.environ.get("ATB_KILLS", "20"))
    schedule = {"steps": 12, "save_every": 2, "keep_last": 2, "ds_config": "zero2_fp32"}
    reference = tmp_path / "reference"
    started = time.monotonic()
    log = tmp_path / "runs.log"
    assert launch(tiny_pretrain_args(tmp_path, reference, **schedule), log).wait() == 0, log.read_text()[-3000:]
    run_s = time.monotonic() - started
    out = tmp_path / "killed"
    args = tiny_pretrain_args(tmp_path, out, **schedule)
    rng = random.Random(0)
    done_kills = 0
    for i in range(kills):
        if not kill_run(args, out / "checkpoints", rng, during_save=i % 2 == 1, limit_s=run_s, log=log):
            break
        done_kills += 1
        latest_tag(out / "checkpoints")  # raises if `latest` names an incomplete or corrupt checkpoint
    assert launch(args, log).wait() == 0, log.read_text()[-3000:]
    assert done_kills >= min(kills, 1)
    weights = "supernet/model.safetensors"
    assert (out / weights).read_bytes() == (reference / weights).read_bytes()
    print(f"KILLS {done_kills} resumed to identical weights; uninterrupted run {run_s:.0f} s")

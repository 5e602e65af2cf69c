"""DeepSpeed checkpoints that are complete or ignored, never half-trusted.

DeepSpeed's own `latest` file is written by rank 0 as soon as *its* files are saved, possibly before other
ranks' ZeRO shards are on disk. Here every rank saves, all ranks meet at a barrier, then rank 0 writes a
completion record (file list and sizes) into the tag folder and only then moves `latest`, atomically.
Resuming validates that record, so a truncated or half-written checkpoint gives a clear error instead of
a confusing failure deep inside DeepSpeed; nothing that exists is ever modified or deleted on resume.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from atb.fsutil import atomic_dir, read_json, write_json_atomic, write_text_atomic
from atb.train.distributed import DistEnv, barrier
from atb.train.trusted_load import CheckpointError, check_pickles

COMPLETE = "atb_complete.json"
LATEST = "latest"
TAG_RE = re.compile(r"^step(\d+)$")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def save(engine, ckpt_dir: Path, step: int, client_state: dict[str, Any], keep_last: int, env: DistEnv,
         record: dict[str, Any] | None = None) -> Path:
    """Save on every rank; `record` (JSON data, e.g. the SuperBert config) goes into the completion record
    so readers never need to unpickle DeepSpeed's files to learn what the checkpoint holds."""
    from deepspeed.checkpoint.constants import (UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY,
                                                UNIVERSAL_CHECKPOINT_VERSION_VALUE)

    tag = tag_for(step)
    state = dict(client_state)
    # lets ds_to_universal convert this checkpoint when a run resumes on a different number of ranks
    state[UNIVERSAL_CHECKPOINT_INFO] = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
    barrier()
    if env.is_main:
        folder = ckpt_dir / tag
        files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
        write_json_atomic(folder / COMPLETE, {**(record or {}), "step": step, "world_size": env.world_size,
                                              "files": files})
        write_text_atomic(ckpt_dir / LATEST, tag)
        prune(ckpt_dir, keep_last)
    barrier()
    return ckpt_dir / tag


def prune(ckpt_dir: Path, keep_last: int) -> None:
    """Delete complete checkpoints older than the newest `keep_last` (and their universal conversions)."""
    if keep_last <= 0:
        return
    steps = sorted(int(m.group(1)) for p in ckpt_dir.iterdir()
                   if (m := TAG_RE.match(p.name)) and (p / COMPLETE).is_file())
    for step in steps[:-keep_last]:
        # the record goes first: a prune killed midway leaves an incomplete folder that start-up removes
        (ckpt_dir / tag_for(step) / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(ckpt_dir / tag_for(step), ignore_errors=True)
        shutil.rmtree(ckpt_dir / f"{tag_for(step)}_universal", ignore_errors=True)


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag to resume from, validated; None when the directory holds no checkpoint yet."""
    if not (ckpt_dir / LATEST).is_file():
        return None
    tag = read_latest(ckpt_dir)
    validate(ckpt_dir / tag)
    return tag


def read_latest(ckpt_dir: Path) -> str:
    """The tag `latest` names: only a step folder beside it, never a path that leads elsewhere."""
    latest = ckpt_dir / LATEST
    raw = latest.read_bytes()
    try:
        tag = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        tag = None
    if tag is None or not TAG_RE.match(tag):
        raise CheckpointError(f"{latest} is corrupt: it holds {raw[:40]!r}, not the name of a step folder beside it "
                              "(step<N>); write the newest complete step folder's name into it")
    return tag


def validate(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} named by '{LATEST}' does not exist")
    if not (folder / COMPLETE).is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete (no {COMPLETE}): its save was interrupted")
    try:
        record = read_json(folder / COMPLETE, "checkpoint completion record")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    for name, size in record.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"checkpoint {folder} is corrupt: {name} has {path.stat().st_size} bytes, "
                                  f"{size} were written")
    return record


def saved_world_size(ckpt_dir: Path, tag: str) -> int:
    return int(read_json(ckpt_dir / tag / COMPLETE, "checkpoint completion record")["world_size"])


def ensure_universal(ckpt_dir: Path, tag: str, env: DistEnv, trust_checkpoint: bool = False) -> str:
    """Convert `tag` to DeepSpeed's universal format once (rank 0), for loading at another world size."""
    universal = f"{tag}_universal"
    if env.is_main and not (ckpt_dir / universal / COMPLETE).is_file():
        check_pickles(ckpt_dir / tag, trust_checkpoint)  # the converter unpickles without restriction
        with atomic_dir(ckpt_dir / universal, overwrite=True) as tmp:
            cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                   str(ckpt_dir / tag), "--output_folder", str(tmp), "--num_extract_workers", "1",
                   "--num_merge_workers", "1"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise CheckpointError(f"converting {ckpt_dir / tag} to a universal checkpoint failed:\n"
                                      f"{proc.stderr[-2000:]}")
            write_json_atomic(tmp / COMPLETE, {"converted_from": tag})
    barrier()
    return universal

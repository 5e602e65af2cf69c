"""Start-up clean-up of what a killed run left inside its own out_dir, and nothing else.

Only names atb itself makes are touched: the hidden `.<name>.<8 chars>.tmp` staging files and folders of
`atb.fsutil`, the `.<name>.old` copy `publish_dir` moves aside (put back when its replacement never
arrived), and step folders in `checkpoints/` that are not complete and are not what `latest` names (a save
or a prune that was killed). Symlinks are never followed, and nothing outside out_dir is looked at.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from atb.train import checkpointing

STAGING = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")
MOVED_ASIDE = re.compile(r"^\.(?P<name>.+)\.old$")
WRITTEN_FOLDERS = (".", "checkpoints", "models")  # where atb's jobs publish files and folders


def sweep(out_dir: Path) -> list[str]:
    """Remove atb's stale temporaries and half-deleted checkpoints in `out_dir`; returns what was done."""
    done: list[str] = []
    for sub in WRITTEN_FOLDERS:
        folder = out_dir / sub
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_symlink():
                continue
            if STAGING.match(path.name):
                _remove(path)
                done.append(f"removed {path}")
            elif (moved := MOVED_ASIDE.match(path.name)) is not None:
                final = folder / moved.group("name")
                if final.exists():
                    _remove(path)
                    done.append(f"removed {path}")
                else:  # killed between moving the old copy aside and renaming the new one in
                    os.replace(path, final)
                    done.append(f"restored {final}")
    done += _half_deleted_checkpoints(out_dir / "checkpoints")
    return done


def _half_deleted_checkpoints(ckpt_dir: Path) -> list[str]:
    if not ckpt_dir.is_dir() or ckpt_dir.is_symlink():
        return []
    try:
        keep = checkpointing.read_latest(ckpt_dir) if (ckpt_dir / checkpointing.LATEST).is_file() else None
    except checkpointing.CheckpointError:
        return []  # a damaged `latest` is reported by the resume, with nothing removed
    done = []
    for path in sorted(ckpt_dir.iterdir()):
        tag = path.name.removesuffix("_universal")
        if (path.is_dir() and not path.is_symlink() and checkpointing.TAG_RE.match(tag) and tag != keep
                and not (path / checkpointing.COMPLETE).is_file()):
            shutil.rmtree(path)
            done.append(f"removed incomplete checkpoint {path}")
    return done


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()

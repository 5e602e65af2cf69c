"""Files: atomic writes (a user's checkpoint, search state or export is either complete or absent, never
half), content hashes, and reading or requiring a path with a one-line error."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False, first_wins: bool = False) -> Iterator[Path]:
    """Yield a fresh temp folder beside `final`; on success it becomes `final` in one rename.

    An existing `final` is an error unless `overwrite`, in which case it is replaced only after the new
    folder is complete (the old one is moved aside first, so a crash leaves one of the two intact). With
    `first_wins`, for a cache that several processes may build at once with the same content, a `final`
    that is there when this folder is done stays, and this one is dropped: replacing it would pull it from
    under a process that may be reading it.
    """
    final = Path(final)
    if final.exists() and not (overwrite or first_wins):
        raise FileExistsError(f"{final} already exists; refusing to overwrite it (pass overwrite=True to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not first_wins:
        publish_dir(tmp, final)
        return
    try:
        os.rename(tmp, final)  # refuses to replace a folder that is not empty
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


def publish_dir(staging: Path, final: Path) -> None:
    """Rename a finished folder into place; an old one is moved aside first, so one always survives."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, final)


STAGING_MARK = ".atb_staging"  # marks a staging folder as atb's, so a re-run may replace or resume it


def staging_path(final: Path) -> Path:
    """Where `final` is built before it is renamed into place: a fixed name beside it, so that every rank of a
    distributed run and a re-run after a crash find the same folder."""
    return final.with_name(f".{final.name}.partial")


def open_staging(final: Path, resume: bool = False) -> Path:
    """The marked staging folder of `final`. One a crashed run left is emptied, or with `resume` kept for the
    parts it finished; a folder of that name atb did not make is refused."""
    staging = staging_path(final)
    if staging.exists():
        if not (staging / STAGING_MARK).is_file():
            raise FileExistsError(f"{staging} exists but is not a staging folder atb made (no {STAGING_MARK}); "
                                  f"move it away: {final} is written there first")
        if not resume:
            shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / STAGING_MARK).touch()
    return staging


def publish_staging(staging: Path, final: Path) -> None:
    (staging / STAGING_MARK).unlink()
    publish_dir(staging, final)


def files_sha256(paths: Iterable[str | Path], with_names: bool = False) -> str:
    """One sha256 over the files' bytes in the order given (each preceded by its name, `with_names`), read in
    blocks so that a weights file is never held in memory whole."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        if with_names:
            digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    return files_sha256([path])


def require_path(path: str | Path, what: str) -> Path:
    """`path`, refused in one line when nothing is there."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); the file is corrupt or truncated") from None

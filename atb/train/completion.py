"""A finished job re-run is a no-op: it says "already complete" and leaves every output as it was.

A DeepSpeed job is finished when its `summary.json` (written after the exports) reports the last step of
the run and `latest` points at that step. A job killed after its last checkpoint but before its summary
resumes at the final step and redoes its final evaluation and exports whole. `--overwrite true` redoes
them for a finished job too; trained checkpoints are never touched either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atb.fsutil import read_json
from atb.train import checkpointing

SUMMARY = "summary.json"


def finished_summary(out: Path, steps: int) -> dict[str, Any] | None:
    """The summary of a run in `out` that trained all `steps` and finished its exports, else None."""
    if not (out / SUMMARY).is_file():
        return None
    try:
        summary = read_json(out / SUMMARY, "run summary")
        tag = checkpointing.latest_tag(out / "checkpoints")
    except (ValueError, FileNotFoundError):
        return None  # a damaged summary or checkpoint: let the resume path report it
    if not isinstance(summary, dict) or summary.get("last_step") != steps or tag != checkpointing.tag_for(steps):
        return None
    return summary


def report_complete(prog: str, out: Path, what: str, announce: bool = True) -> None:
    if announce:
        print(f"{prog}: already complete: {out} holds {what}; nothing was changed (pass --overwrite true to redo "
              "it)")

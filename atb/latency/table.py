"""The latency table: one JSON line per measured arch, appended as each measurement finishes.

Appending (flushed and fsynced) makes measuring resumable: a killed run loses at most the arch it was
timing, and re-running measures only the archs the file lacks. A crash mid-write can leave a partial
last line; it is dropped with a warning (and cut off before the next append), while a bad line anywhere
else means the file is not a table we wrote, which is an error.
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from atb.latency.features import arch_flops, arch_params
from atb.latency.measure import Measurement, MeasureSettings, device_description
from atb.space import Arch, SearchSpace

STATISTICS = ("median_ms", "p10_ms", "min_ms", "mean_ms")


def make_row(arch: Arch, space: SearchSpace, settings: MeasureSettings, m: Measurement,
             vocab_size: int) -> dict[str, Any]:
    return {
        "arch": arch.to_dict(),
        "arch_name": arch.name,
        **{k: round(v, 5) if isinstance(v, float) else v for k, v in m.to_dict().items()},
        "flops": arch_flops(arch, settings.batch, settings.seq),
        "params": arch_params(arch, vocab_size),
        "settings": settings.identity(),
        "device": device_description(settings),
        "space": space.to_spec(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _parse_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows and the byte length of the valid prefix (the file minus a torn last line)."""
    raw = path.read_bytes()
    rows: list[dict[str, Any]] = []
    valid = 0
    lines = raw.split(b"\n")
    for number, line in enumerate(lines, start=1):
        is_last = number == len(lines)
        if not line.strip():
            valid += len(line) + (0 if is_last else 1)
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "arch" not in row or "median_ms" not in row:
                raise ValueError("not a latency row")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
            if is_last:  # torn write from a killed run: drop it
                warnings.warn(f"latency table {path}: ignoring incomplete last line ({err})")
                break
            raise ValueError(f"latency table {path} line {number} is not a latency row ({err}); "
                             f"the file is corrupt or not a table written by `latency measure`") from None
        rows.append(row)
        valid += len(line) + (0 if is_last else 1)
    return rows, valid


def read_table(path: str | Path, allow_empty: bool = False) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latency table not found: {path} (create it with `tools/latency.py measure`)")
    rows, _ = _parse_lines(path)
    if not rows and not allow_empty:
        raise ValueError(f"latency table {path} is empty: it holds no measured archs "
                         f"(run `tools/latency.py measure --out {path}` first)")
    for row in rows:
        Arch.from_dict(row["arch"])
        row["settings"].setdefault("runtime", "torch")  # tables from before runtimes were all eager PyTorch
    return rows


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _, valid = _parse_lines(path)
        if valid < path.stat().st_size:
            os.truncate(path, valid)
        if valid and not path.read_bytes().endswith(b"\n"):
            with open(path, "ab") as fh:
                fh.write(b"\n")
    with open(path, "a") as fh:
        fh.write(json.dumps(row, separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def check_consistent(rows: list[dict[str, Any]], path: str | Path, settings: dict[str, Any] | None = None,
                     space_spec: dict[str, Any] | None = None, device_name: str | None = None) -> None:
    """Every row must mean the same thing: same settings, same device, same space (default: row 1's)."""
    settings = settings or rows[0]["settings"]
    space_spec = space_spec or rows[0]["space"]
    device_name = device_name or rows[0]["device"].get("name")
    for i, row in enumerate(rows, start=1):
        if row["settings"] != settings:
            diff = {k: (row["settings"].get(k), v) for k, v in settings.items() if row["settings"].get(k) != v}
            raise ValueError(f"latency table {path} row {i} ({row['arch_name']}) was measured with other "
                             f"settings (table vs requested: {diff}); use a separate table per setting")
        if row["space"] != space_spec:
            raise ValueError(f"latency table {path} row {i} ({row['arch_name']}) belongs to space "
                             f"'{row['space'].get('name')}', not '{space_spec.get('name')}'")
        if row["device"].get("name") != device_name:
            raise ValueError(f"latency table {path} row {i} was measured on {row['device'].get('name')!r}, "
                             f"not {device_name!r}: one table per device")


def latencies(rows: list[dict[str, Any]], statistic: str = "median_ms") -> tuple[list[Arch], list[float]]:
    """Archs and their latency; probe-normalised rows are put on one scale, the quietest probe time any of
    them saw (a row normalised early in a run, before the probe had seen a quiet stretch, reads high)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    probe_times = [r["probe_ms"] for r in rows if r.get("probe_ms")]
    quietest = min(probe_times) if probe_times else None
    values = []
    for r in rows:
        scale = quietest / r["probe_ms"] if quietest and r.get("probe_ms") else 1.0
        values.append(float(r[statistic]) * scale)
    return [Arch.from_dict(r["arch"]) for r in rows], values

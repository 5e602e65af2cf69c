"""Measuring on a machine that others are using (opt-in: `--probe true`; bench/RESULTS.md has the figures).

On a shared machine the dominant error of a latency table is not jitter between forwards but seconds to
minutes during which someone else's job runs, and it slows even the thread's CPU time (caches and memory
bandwidth are shared too). Repeats and medians cannot remove a slowdown that lasts longer than the
measurement, so each forward can be expressed relative to a fixed reference:

- `ReferenceProbe`, a small fixed encoder, runs between every two forwards of the measured model. A
  forward's latency is taken as (its time / the mean of the probe times on both sides) x the probe's
  quiet time, so a slowdown that hits both cancels. The quiet time is the lowest rolling median the
  probe has shown on this machine, because a run that never sees a quiet moment would otherwise be
  scaled by a busy one; it is kept in a small cache file (`ATB_PROBE_CACHE`, default
  ~/.cache/atb/latency_probe.json) keyed by CPU, torch version, threads and clock, and
  `table.latencies` rescales the rows of a table to the lowest value any of them used.
- `other_load`: /proc/stat busy time (including steal) minus this process's, in cores; recorded with
  each measurement so a table shows what the machine was doing.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from atb.fsutil import write_json_atomic
from atb.model.extract import default_model_config, new_masked_lm
from atb.space import Arch


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    busy_ticks: int  # all CPUs: user + nice + system + irq + softirq + steal
    own_ticks: int  # this process: user + system


def _ticks_per_second() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def snapshot() -> CpuSnapshot | None:
    """None where /proc is unavailable (not Linux)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        with open("/proc/self/stat") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = values[:7]
    steal = values[7] if len(values) > 7 else 0
    # /proc/self/stat after the command name: state is field 3, utime 14, stime 15 (1-based, whole line)
    utime, stime = int(own[11]), int(own[12])
    return CpuSnapshot(time.monotonic(), user + nice + system + irq + softirq + steal, utime + stime)


def other_load(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """Cores' worth of CPU used by everything but this process between two snapshots."""
    if before is None or after is None or after.wall <= before.wall:
        return None
    others = (after.busy_ticks - before.busy_ticks) - (after.own_ticks - before.own_ticks)
    return max(others, 0) / _ticks_per_second() / (after.wall - before.wall)


class ReferenceProbe:
    """A small encoder whose timing says how fast the CPU runs right now, relative to when it is quiet."""

    ARCH = Arch(1, 128, 2, 64, 512)
    WINDOW = 15

    def __init__(self, clock: Callable[[], float] = time.perf_counter, seq: int = 128,
                 quiet_ms: float = float("inf")):
        self.clock = clock
        torch.manual_seed(0)
        self.model = new_masked_lm(self.ARCH, default_model_config(seq, vocab_size=1000)).bert.eval()
        ids = torch.randint(1, 1000, (1, seq), generator=torch.Generator().manual_seed(0))
        self.inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                       "token_type_ids": torch.zeros_like(ids)}
        self.recent: deque[float] = deque(maxlen=self.WINDOW)
        self.quiet_ms = quiet_ms
        self.cache_key = ""  # where remember_quiet files it; set by shared_probe

    def time_once(self) -> float:
        """One probe forward (ms); a quieter stretch than any before lowers `quiet_ms`."""
        with torch.inference_mode():
            start = self.clock()
            self.model(**self.inputs)
            elapsed = (self.clock() - start) * 1000.0
        self.recent.append(elapsed)
        if len(self.recent) == self.WINDOW:
            self.quiet_ms = min(self.quiet_ms, statistics.median(self.recent))
        return elapsed

    def calibrate(self, forwards: int = 30) -> float:
        for _ in range(forwards):
            self.time_once()
        return self.quiet_ms


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path() -> Path:
    return Path(os.environ.get("ATB_PROBE_CACHE", Path.home() / ".cache" / "atb" / "latency_probe.json"))


def _cache_key(clock_name: str, threads: int) -> str:
    return (f"{cpu_name()} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
            f"threads {threads} | clock {clock_name} | probe {ReferenceProbe.ARCH.name}")


def _read_cache() -> dict[str, float]:
    try:
        data = json.loads(cache_path().read_text())
        return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}  # no cache, or a damaged one: start from this run's own measurements


def remember_quiet(probe: "ReferenceProbe") -> None:
    """Keep the machine's quietest probe time for the next run (best effort: a read-only home is fine)."""
    key = probe.cache_key
    if not key:
        return
    cache = _read_cache()
    if probe.quiet_ms < cache.get(key, float("inf")):
        cache[key] = round(probe.quiet_ms, 6)
        try:
            write_json_atomic(cache_path(), cache)
        except OSError:
            pass


_probes: dict[tuple[str, int], ReferenceProbe] = {}


def shared_probe(clock_name: str, clock: Callable[[], float]) -> ReferenceProbe:
    """One probe per process, clock and thread count, starting from the quietest time this machine has
    shown before, so its reference is the same from run to run and keeps improving across archs."""
    key = (clock_name, torch.get_num_threads())
    if key not in _probes:
        cache_key = _cache_key(*key)
        probe = ReferenceProbe(clock, quiet_ms=_read_cache().get(cache_key, float("inf")))
        probe.cache_key = cache_key
        probe.calibrate()
        _probes[key] = probe
    return _probes[key]

"""What a search has done so far, on disk, so that a killed search continues where it stopped.

Two records, written at two grains:
- `state.json` (rank 0, atomically, after every generation): every evaluated arch with its score, each
  target's proposals and current population, the RNG state and the generation count. It is the
  committed truth: the next generation is proposed from it alone, so a resumed search proposes exactly
  what the uninterrupted one would have.
- `journal/rank<r>.jsonl` (every rank, appended and flushed after every single evaluation): scores
  computed in a generation that had not been committed when the process died. A resumed search takes
  them from here instead of computing them again. A torn last line (killed mid-write) is ignored.

The state records the settings it was made with; resuming with different ones is refused (the cache
would mix scores of different fitness definitions), except that evolution may be given more generations.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from atb.fsutil import read_json, write_json_atomic
from atb.search.evolution import Record
from atb.space import Arch

STATE_FILE = "state.json"
JOURNAL_DIR = "journal"
STATE_VERSION = 1


@dataclass
class SearchState:
    fingerprint: dict[str, Any]
    generation: int = 0  # generations completed
    rng_state: Any = None
    evaluated: dict[Arch, Record] = field(default_factory=dict)
    proposed: dict[str, list[Arch]] = field(default_factory=dict)
    populations: dict[str, list[Arch]] = field(default_factory=dict)
    computed: int = 0  # evaluations ever run in this folder (journal lines): equals len(evaluated) if none ran twice
    exhausted: bool = False  # random/fast: no target could find another new arch in its band
    history: list[dict[str, Any]] = field(default_factory=list)

    # ---- RNG ------------------------------------------------------------------------------------
    def rng(self, seed: int) -> random.Random:
        rng = random.Random(seed)
        if self.rng_state is not None:
            version, internal, gauss = self.rng_state
            rng.setstate((version, tuple(internal), gauss))
        return rng

    def keep_rng(self, rng: random.Random) -> None:
        version, internal, gauss = rng.getstate()
        self.rng_state = [version, list(internal), gauss]

    # ---- JSON -----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "generation": self.generation,
            "computed": self.computed,
            "exhausted": self.exhausted,
            "evaluated": [{"arch": r.arch.name, "score": r.score, "latency": r.latency, "generation": r.generation,
                           "seconds": r.seconds} for r in self.evaluated.values()],
            "proposed": {k: [a.name for a in v] for k, v in self.proposed.items()},
            "populations": {k: [a.name for a in v] for k, v in self.populations.items()},
            "history": self.history,
            "rng_state": self.rng_state,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], origin: str) -> SearchState:
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"{origin} is not an atb search state (version {STATE_VERSION})")
        try:
            evaluated = {}
            for row in data["evaluated"]:
                arch = Arch.parse(row["arch"])
                evaluated[arch] = Record(arch, float(row["score"]), float(row["latency"]), int(row["generation"]),
                                         float(row["seconds"]))
            return cls(
                fingerprint=data["fingerprint"], generation=int(data["generation"]), rng_state=data["rng_state"],
                evaluated=evaluated,
                proposed={k: [Arch.parse(n) for n in v] for k, v in data["proposed"].items()},
                populations={k: [Arch.parse(n) for n in v] for k, v in data["populations"].items()},
                computed=int(data["computed"]), exhausted=bool(data["exhausted"]), history=list(data["history"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{origin} is damaged or from another atb version: {err}") from None


def save_state(out_dir: Path, state: SearchState) -> None:
    write_json_atomic(out_dir / STATE_FILE, state.to_json())


def load_state(out_dir: Path, fingerprint: dict[str, Any]) -> SearchState:
    """The committed state of `out_dir`, or a fresh one; refuses a state made with other settings."""
    path = out_dir / STATE_FILE
    if not path.exists():
        return SearchState(fingerprint=fingerprint)
    state = SearchState.from_json(read_json(path, "search state"), str(path))
    differs = sorted(k for k in set(fingerprint) | set(state.fingerprint)
                     if fingerprint.get(k) != state.fingerprint.get(k))
    if differs:
        detail = "; ".join(f"{k}: saved {state.fingerprint.get(k)!r}, now {fingerprint.get(k)!r}" for k in differs[:4])
        raise ValueError(f"{out_dir} holds a search made with other settings ({detail}); resume it with the same "
                         "settings or choose another --out_dir")
    return state


class Journal:
    """Per-rank append-only log of computed scores (see the module docstring)."""

    def __init__(self, out_dir: Path, rank: int):
        self.path = out_dir / JOURNAL_DIR / f"rank{rank}.jsonl"
        self._fh: TextIO | None = None

    def append(self, arch: Arch, score: float, seconds: float, generation: int) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.exists() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._fh = open(self.path, "a")
            if torn:  # end the line a kill cut short, so this run's first line stays whole
                self._fh.write("\n")
        self._fh.write(json.dumps({"arch": arch.name, "score": score, "seconds": seconds,
                                   "generation": generation}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_journals(out_dir: Path) -> tuple[dict[Arch, tuple[float, float]], int]:
    """Scores of every journalled evaluation (arch -> (score, seconds)) and the number of journal lines,
    i.e. how many evaluations were ever computed in this folder, by any run on any rank."""
    scores: dict[Arch, tuple[float, float]] = {}
    lines = 0
    for path in sorted((out_dir / JOURNAL_DIR).glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                scores[Arch.parse(row["arch"])] = (float(row["score"]), float(row["seconds"]))
                lines += 1
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line torn by a kill
    return scores, lines

"""The generation loop, independent of where scores come from (a checkpoint's dev loss, a fine-tune, or
a test's fake) and of how many ranks run it.

Per generation: rank 0 proposes from the committed state and decides which proposals need computing
(not evaluated before, not in a journal left by a killed run) → broadcast → each rank computes its
share, journalling every score as it goes → all_gather → rank 0 commits the generation to state.json
and rewrites the outputs. Other ranks only ever compute what they are told.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atb.search.evolution import Proposer, Record
from atb.search.outputs import write_outputs
from atb.search.parallel import Comm, assign
from atb.search.state import Journal, SearchState, load_state, read_journals, save_state
from atb.space import Arch
from atb.tracking import progress

Fitness = Callable[[Arch], float]


@dataclass
class LoopSpec:
    out_dir: Path
    seed: int
    fingerprint: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)  # copied into results.json
    stop_after_generation: int = 0  # > 0: stop once this many generations are committed (resume later)
    seq_len: int = 128  # for the cost model that balances ranks
    vocab_size: int = 30522
    progress: bool = True
    plot: bool = True


class EvaluationFailed(RuntimeError):
    pass


class SearchAborted(ValueError):
    """Raised on the other ranks when rank 0 could not plan a generation (its own error says why)."""


def _planned(leader: _Leader | None) -> tuple[dict[str, Any] | None, Exception | None]:
    if leader is None:
        return None, None
    try:
        return leader.next_plan(), None
    except Exception as err:  # the other ranks wait in broadcast: tell them, then fail here too
        return None, err


def run_search_loop(spec: LoopSpec, proposer: Proposer, fitness: Fitness, comm: Comm) -> SearchState | None:
    """Run (or continue) the search in `spec.out_dir`; rank 0 returns the final state, others None."""
    leader, error = None, None
    if comm.rank == 0:
        try:
            leader = _Leader(spec, proposer, comm.world_size)
        except Exception as err:  # e.g. a state made with other settings: reported to all ranks below
            error = err
    journal = Journal(spec.out_dir, comm.rank)
    try:
        while True:
            plan, error = (None, error) if error else _planned(leader)
            plan = comm.broadcast({"error": str(error)} if error else plan)
            if error:
                raise error
            if plan is None:
                break
            if "error" in plan:
                raise SearchAborted(f"rank 0 stopped the search: {plan['error']}")
            generation, names, owners = plan["generation"], plan["compute"], plan["owners"]
            mine = [Arch.parse(n) for n, r in zip(names, owners) if r == comm.rank]
            started = time.perf_counter()
            computed = _evaluate_share(mine, fitness, journal, generation, spec, plan["label"], comm.rank == 0)
            gathered = comm.all_gather(computed)
            failures = [g["error"] for g in gathered if g.get("error")]
            if failures:
                raise EvaluationFailed(f"evaluation failed in generation {generation + 1}: {failures[0]}")
            if leader:
                leader.commit(plan, [g["scores"] for g in gathered], comm.world_size, time.perf_counter() - started)
            if spec.stop_after_generation and generation + 1 >= spec.stop_after_generation:
                break
    finally:
        journal.close()
    if leader:
        leader.finish()
        return leader.state
    return None


def _evaluate_share(archs: list[Arch], fitness: Fitness, journal: Journal, generation: int, spec: LoopSpec,
                    label: str, show: bool) -> dict[str, Any]:
    scores: dict[str, tuple[float, float]] = {}
    try:
        for arch in progress(archs, enabled=show and spec.progress, desc=label):
            start = time.perf_counter()
            score = float(fitness(arch))
            seconds = time.perf_counter() - start
            journal.append(arch, score, seconds, generation)
            scores[arch.name] = (score, seconds)
    except Exception as err:  # the other ranks wait in all_gather: tell them rather than hang
        return {"scores": scores, "error": f"{type(err).__name__}: {err}"}
    return {"scores": scores}


class _Leader:
    """Rank 0's side: the state, the proposer and the outputs."""

    def __init__(self, spec: LoopSpec, proposer: Proposer, world_size: int):
        self.spec = spec
        self.proposer = proposer
        self.world_size = world_size
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = load_state(spec.out_dir, spec.fingerprint)
        self.journalled, self.journal_lines = read_journals(spec.out_dir)
        self.largest = proposer.space.largest()
        self._pending: dict[str, Any] = {}
        # a re-run of a finished search has nothing to do and must not rewrite its outputs
        self.was_complete = self.finished() and (spec.out_dir / "results.json").is_file()

    def finished(self) -> bool:
        return self.state.exhausted or self.state.generation >= self.proposer.total_generations

    def next_plan(self) -> dict[str, Any] | None:
        if self.finished():
            return None
        rng = self.state.rng(self.spec.seed)
        g = self.state.generation
        proposals = self.proposer.propose(g, self.state.evaluated, self.state.proposed, rng)
        if self.proposer.method != "evolution" and not any(proposals.values()):
            self.state.exhausted = True
            save_state(self.spec.out_dir, self.state)
            return None
        wanted = [a for archs in proposals.values() for a in archs]
        if g == 0:
            wanted.append(self.largest)  # reference for the sanity report
        new = [a for a in dict.fromkeys(wanted) if a not in self.state.evaluated]
        reused = {a: self.journalled[a] for a in new if a in self.journalled}
        compute = [a for a in new if a not in reused]
        owners = assign(compute, self.world_size, self.spec.seq_len, self.spec.vocab_size)
        self._pending = {"proposals": proposals, "rng": rng, "new": new, "reused": reused}
        return {"generation": g, "compute": [a.name for a in compute], "owners": owners,
                "label": f"generation {g + 1}/{self.proposer.total_generations}"}

    def commit(self, plan: dict[str, Any], shares: list[dict[str, tuple[float, float]]], world_size: int,
               wall_seconds: float) -> None:
        state, pending, g = self.state, self._pending, plan["generation"]
        computed = {Arch.parse(n): v for share in shares for n, v in share.items()}
        missing = [n for n in plan["compute"] if Arch.parse(n) not in computed]
        if missing:
            raise EvaluationFailed(f"generation {g + 1}: no score came back for {missing[:3]}")
        latencies = self.proposer.oracle.of(pending["new"])
        for arch, latency in zip(pending["new"], latencies):
            score, seconds = computed[arch] if arch in computed else pending["reused"][arch]
            state.evaluated[arch] = Record(arch, score, latency, g, seconds)
        for label, archs in pending["proposals"].items():
            state.proposed.setdefault(label, []).extend(archs)
        for target in self.proposer.targets:
            state.populations[target.label] = [r.arch for r in self.proposer.ranked(target, state.evaluated)
                                               ][: self.proposer.settings.population]
        self.journal_lines += len(computed)
        state.computed = self.journal_lines  # every evaluation ever run in this folder, killed runs included
        state.generation = g + 1
        state.keep_rng(pending["rng"])
        best = {t.label: (ranked[0].score if (ranked := self.proposer.ranked(t, state.evaluated)) else None)
                for t in self.proposer.targets}
        state.history.append({"generation": g + 1, "proposed": sum(len(v) for v in pending["proposals"].values()),
                              "new": len(pending["new"]), "computed": len(computed),
                              "from_journal": len(pending["reused"]), "world_size": world_size,
                              "eval_seconds": sum(s for _, s in computed.values()), "wall_seconds": wall_seconds,
                              "best": best})
        save_state(self.spec.out_dir, state)
        write_outputs(self.spec.out_dir, state, self.proposer, self.largest,
                      {**self.spec.info, "world_size": world_size}, complete=self.finished(), plot=False)

    def finish(self) -> None:
        if self.was_complete:
            print(f"search: already complete: {self.spec.out_dir} holds a finished search; nothing was changed")
            return
        write_outputs(self.spec.out_dir, self.state, self.proposer, self.largest,
                      {**self.spec.info, "world_size": self.world_size}, complete=self.finished(), plot=self.spec.plot)

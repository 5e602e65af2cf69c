"""Timing shared by the A-vs-B ratio benchmarks (superplm_overhead, subnet_scaling, export_latency).

The machine these run on is small and shared, so load comes and goes while a bench runs. Every helper
here therefore compares A and B *side by side*: repeats alternate A B, B A, A B ... (neither always
goes first, so neither always finds warm caches or a quiet machine), each bench warms both up first,
and figures are medians with their spread: the quartiles of the samples and of the per-round ratio
A_i / B_i (adjacent runs share the load, so this paired ratio is steadier than either time alone).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class Samples:
    """Seconds per repeat of one case."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def quartiles(self) -> tuple[float, float]:
        return quartiles(self.values)

    def describe(self, unit: float = 1e3, suffix: str = "ms") -> str:
        q1, q3 = self.quartiles()
        return f"{self.median * unit:.1f} {suffix} [IQR {q1 * unit:.1f}-{q3 * unit:.1f}]"


@dataclass(frozen=True)
class Comparison:
    """A against B over the same rounds."""

    a: Samples
    b: Samples

    @property
    def ratio(self) -> float:
        """median(A) / median(B): the headline figure of a time ratio."""
        return self.a.median / self.b.median

    @property
    def paired(self) -> tuple[float, ...]:
        return tuple(x / y for x, y in zip(self.a.values, self.b.values))

    @property
    def paired_ratio(self) -> float:
        """median(A_i / B_i) over rounds: robust where the machine's speed shifts between rounds (adjacent
        A and B see the same state; two separate medians can each land in a different one)."""
        return statistics.median(self.paired)

    def describe(self, a_name: str, b_name: str) -> str:
        q1, q3 = quartiles(self.paired)
        return (f"{a_name} {self.a.describe()} | {b_name} {self.b.describe()} | ratio {self.ratio:.3f} "
                f"(per-round {self.paired_ratio:.3f}, IQR {q1:.3f}-{q3:.3f}, "
                f"range {min(self.paired):.3f}-{max(self.paired):.3f}, n={len(self.paired)})")


def quartiles(values: tuple[float, ...] | list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What a timer must wait for: CUDA kernels run asynchronously, so a wall clock read right after the
    Python call returns would time the launches, not the work."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def compare(a: Callable[[], object], b: Callable[[], object], repeats: int, warmup: int = 1,
            sync: Callable[[], None] = lambda: None, min_seconds: float = 0.0) -> Comparison:
    """Time `a` and `b` `repeats` times each, alternating which goes first every round; with `min_seconds`,
    go on (in pairs of rounds, so each goes first equally often) until the rounds took that long: cheap
    cases then get many rounds, whose noise a few would not average out."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        a()
        b()
    a_times: list[float] = []
    b_times: list[float] = []
    start = time.perf_counter()

    def more(done: int) -> bool:
        if done < repeats:
            return True
        return min_seconds > 0 and (done % 2 == 1 or time.perf_counter() - start < min_seconds)

    i = 0
    while more(i):
        i += 1
        if i % 2 == 1:
            a_times.append(timed(a, sync))
            b_times.append(timed(b, sync))
        else:
            b_times.append(timed(b, sync))
            a_times.append(timed(a, sync))
    return Comparison(Samples(tuple(a_times)), Samples(tuple(b_times)))


def set_threads(n: int) -> None:
    """Intra-op threads for both cases alike (inter-op threads stay as they are: nothing here uses them)."""
    torch.set_num_threads(n)


def machine_line(device: torch.device | None = None) -> str:
    """What the figures were measured on, load included: a shared machine's numbers mean little without it."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = f", {torch.cuda.get_device_name(device)}" if device is not None and device.type == "cuda" else ""
    return (f"torch {torch.__version__}{gpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
            f"load average {load}")


def same_function_tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Loss tolerance for `check_same_function`: half precision rounds the two models' different (but
    equivalent) operation orders differently; fp32 must agree to rounding."""
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}


def bench_line(name: str, ratio: float) -> str:
    return f"BENCH {name} ratio={ratio:.3f}"


def mlm_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens, 15% of positions labelled, no padding (as packed pre-training blocks)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    labels = torch.full_like(ids, -100)
    picked = torch.rand(ids.shape, generator=g) < 0.15
    labels[picked] = ids[picked]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": labels}


def check_same_function(supernet: torch.nn.Module, dense: torch.nn.Module, arch: Any, batch: dict,
                        rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Without dropout the two must give the same loss, or the timings would compare different work."""
    supernet.eval(), dense.eval()
    with torch.no_grad():
        a = supernet(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], arch=arch,
                     labels=batch["labels"], logits_for_all=True).loss
        b = dense(**batch).loss
    supernet.train(), dense.train()
    if not torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol):
        raise SystemExit(f"{arch.name}: SuperBert loss {a.item()} != dense loss {b.item()}")

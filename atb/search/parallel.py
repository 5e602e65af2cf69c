"""Sharing a generation's evaluations among ranks.

Only the evaluation of new candidates is distributed; every decision (what to propose, what to keep)
is made by rank 0 from the committed state and broadcast. Each candidate is evaluated by exactly one rank,
so its score cannot depend on how many ranks there are, only on the (identical) weights and dev batches.

Candidates differ in cost by orders of magnitude (1 layer of 64 vs 8 layers of 768), so a round-robin
deal would leave one rank waiting for another: they are dealt largest-first to the least-loaded rank by
an analytic cost estimate (longest-processing-time scheduling), deterministically.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch.distributed as dist

from atb.latency.features import arch_flops
from atb.space import Arch

MASKED_FRACTION = 0.15  # share of positions the MLM head runs on


class Comm(Protocol):
    rank: int
    world_size: int

    def broadcast(self, obj: Any) -> Any: ...

    def all_gather(self, obj: Any) -> list[Any]: ...

    def barrier(self) -> None: ...


class LocalComm:
    """One process, no torch.distributed (tests, notebooks)."""

    rank = 0
    world_size = 1

    def broadcast(self, obj: Any) -> Any:
        return obj

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass


class TorchComm:
    """Object collectives over an initialised torch.distributed group (gloo on CPU, NCCL on GPU)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()


def evaluation_cost(arch: Arch, seq_len: int = 128, vocab_size: int = 30522) -> float:
    """Multiply-adds per token of a sub-network's MLM forward: encoder layers plus the head on masked tokens."""
    encoder = arch_flops(arch, batch=1, seq=seq_len) / (2 * seq_len)
    head = MASKED_FRACTION * (arch.hidden * arch.hidden + arch.hidden * vocab_size)
    return encoder + head


def assign(archs: list[Arch], world_size: int, seq_len: int = 128, vocab_size: int = 30522) -> list[int]:
    """Rank that evaluates each arch (same order as `archs`)."""
    load = [0.0] * world_size
    owner = [0] * len(archs)
    costs = [evaluation_cost(a, seq_len, vocab_size) for a in archs]
    for i in sorted(range(len(archs)), key=lambda i: (-costs[i], archs[i])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += costs[i]
    return owner

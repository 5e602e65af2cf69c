"""Where SuperBert's widened (full-size) gradients get their memory.

A sub-network's weight gradient must be the full weight's size (zero outside the slice), so every step
allocates gradients as large as the supernet's, not the sub-network's: for BERT's word embeddings that is
94 MB (30522 x 768) even at hidden 128. On the CPU, glibc maps every allocation above 32 MB afresh and
unmaps it when freed, and trims freed heap memory back to the OS: the next step's gradient then
page-faults on every 4 KiB page it touches. On this VM that cost the small sub-networks about 5 % of a
step against the dense BERT of the same size, whose gradients are a fraction of the size
(bench/RESULTS.md).

So on the CPU, widened gradients come from a pool: a storage is handed out again once nothing but the
pool refers to it (the step that used it is over: `zero_grad(set_to_none=True)`, or DeepSpeed has copied
it into its buckets and dropped it). A storage still referenced anywhere - a `.grad` being accumulated
into, a view someone kept - is never handed out twice; a new one is made. The cost is host memory: the
pool keeps, between steps, at most the gradients a step had alive at once (the supernet's gradient
size, which the default `zero_grad(set_to_none=False)` would keep too). On GPUs the caching allocator
already reuses memory, and ZeRO frees gradients to save memory, so nothing is pooled there.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Callable

import torch


def empty_gradient(like: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """An uninitialised tensor of `shape` with `like`'s dtype and device, for a gradient the caller fills."""
    if like.device.type != "cpu" or _POOL_USE_COUNT is None:
        return fresh_gradient(like, shape)
    return _CPU_POOL.take(like, shape)


def fresh_gradient(like: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`like.new_empty(shape)`, with huge pages asked for when the tensor gets a mapping of its own:
    512x fewer page faults for the pool's first use of a large storage (only advice: where the kernel
    ignores it, or on other platforms, nothing changes)."""
    out = like.new_empty(shape)
    if _MADVISE is not None and out.device.type == "cpu" and out.nbytes >= _OWN_MAPPING:
        start = -(-out.data_ptr() // _HUGE_PAGE) * _HUGE_PAGE
        end = (out.data_ptr() + out.nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _MADVISE(start, end - start, _MADV_HUGEPAGE)
    return out


class _StoragePool:
    def __init__(self) -> None:
        self._storages: dict[tuple, list[torch.UntypedStorage]] = {}

    def take(self, like: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        key = (tuple(shape), like.dtype, like.device)
        kept = self._storages.setdefault(key, [])
        for storage in kept:
            if _POOL_USE_COUNT(storage._cdata) == 1:  # only `kept` refers to it
                return torch.empty(0, dtype=like.dtype, device=like.device).set_(storage, 0, shape)
        out = fresh_gradient(like, shape)
        kept.append(out.untyped_storage())
        return out

    def clear(self) -> None:
        self._storages.clear()


def release_pooled_gradients() -> None:
    """Give the pooled storages back (those still in use live on with their users)."""
    _CPU_POOL.clear()


def _load_madvise() -> Callable[[int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


_MADVISE = _load_madvise()
_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20
_OWN_MAPPING = 32 << 20  # glibc malloc maps allocations above this afresh and unmaps them on free
# How many references a storage has: private to torch (2.1+), so without it nothing is pooled.
_POOL_USE_COUNT: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)
_CPU_POOL = _StoragePool()

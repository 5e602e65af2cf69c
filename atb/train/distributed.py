"""Distributed start-up shared by pre-training, development and search.

Works under the deepspeed launcher, torchrun, Slurm (through the launch scripts) or as a single plain
process. On CPU the backend is gloo (oneCCL is rarely installed), and DeepSpeed's shared-memory
all-reduce op, which compiles for ~30 s on first use and only serves inference, is not built.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def accelerator_name() -> str:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name()


def init_distributed(timeout_s: int = 1800) -> DistEnv:
    import deepspeed

    on_cpu = accelerator_name() == "cpu"
    if on_cpu:
        _skip_shared_memory_comm_op()
    if "RANK" not in os.environ:  # a plain single process: give DeepSpeed a one-rank group on loopback
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if on_cpu else None, verbose=False,
                                   timeout=timedelta(seconds=timeout_s))
        atexit.register(_shut_down)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if on_cpu:
        device = torch.device("cpu")
    else:
        from deepspeed.accelerator import get_accelerator

        get_accelerator().set_device(local_rank)
        device = torch.device(get_accelerator().device_name(local_rank))
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _skip_shared_memory_comm_op() -> None:
    """Stop DeepSpeed from compiling its CPU shared-memory all-reduce at start-up: it only serves inference,
    and DeepSpeed offers no switch for it (DS_BUILD_SHM_COMM applies to pre-built installs only)."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def _shut_down() -> None:
    """Destroy the process group before the interpreter tears down: left to static destructors, gloo's
    worker threads were sometimes still joinable and the rank died with SIGABRT ("terminate called
    without an active exception") after a run had finished and saved everything."""
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_after_success() -> None:
    """End a finished multi-rank job with os._exit(0) once every rank got here.

    A gloo thread can abort the process in a C++ static destructor at exit ("terminate called without an
    active exception"), after the run has saved and exported everything, and the launcher then reports
    the whole job failed. After a barrier there is nothing left to do that the
    OS does not do better, so skip the destructors; errors still exit through the normal path with
    their own exit code.
    """
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    dist.barrier()
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()  # e.g. a Trainer run with report_to=wandb: os._exit skips wandb's own atexit
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over all ranks (a new tensor; `t` itself when there is one rank)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

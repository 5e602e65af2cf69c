"""Run atb tools the way users do: through torchrun / the DeepSpeed launcher, with a hard timeout
(a mismatched collective hangs forever rather than failing)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import torch

from conftest import PYTHON, REPO

DIST_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def tool_env(nproc: int) -> dict[str, str]:
    """DIST_ENV, but a job with a GPU for each of its ranks runs on the GPUs (NCCL): on a GPU machine the
    suite then also checks the CUDA paths (bf16/fp16 engines); anything else runs on the CPU with gloo."""
    env = {**os.environ, **DIST_ENV}
    if torch.cuda.is_available() and torch.cuda.device_count() >= nproc:
        env.pop("DS_ACCELERATOR")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(tool: str, args: list, nproc: int = 1, timeout: int = 300, check: bool = True,
             launcher: list[str] | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = str(REPO / "tools" / f"{tool}.py")
    if launcher is not None:
        cmd = [*launcher, script]
    elif nproc == 1:
        cmd = [PYTHON, script]
    else:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), script]
    cmd += [str(a) for a in args]
    ranks = nproc if launcher is None else 2  # the launcher tests start two ranks
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**tool_env(ranks), **(env or {})},
                          cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


def tiny_pretrain_args(root: Path, out: Path, **overrides) -> list:
    """Flags of a seconds-long 1-rank pre-training on a small corpus and tokenizer made in `root`."""
    from atb.data import load_corpus, train_wordpiece

    corpus, tokenizer = root / "corpus.txt", root / "tokenizer"
    if not corpus.is_file():
        corpus.write_text("\n".join(f"the quick brown fox jumps over the lazy dog {i}" for i in range(200)) + "\n")
        train_wordpiece(load_corpus(str(corpus)), 60, tokenizer)
    flags = {"out_dir": out, "corpus": corpus, "tokenizer": tokenizer, "space": "tiny", "seq_len": 16,
             "micro_batch": 4, "steps": 3, "save_every": 3, "warmup_steps": 1, "lr": 2e-3, "log_every": 1,
             "ds_config": "zero2_fp32", "report_to": "none", "dev_fraction": 0.05, **overrides}
    return [item for k, v in flags.items() for item in (f"--{k}", v)]

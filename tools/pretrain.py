"""Pre-train a SuperPLM on DeepSpeed.

    # 2 processes on this machine (CPU: DS_ACCELERATOR=cpu; GPU: one process per GPU)
    deepspeed --num_accelerators 2 tools/pretrain.py --ds_config zero2_bf16 --space demo --steps 1000
    # multi-node: see launch/multinode.sh and launch/slurm.sbatch

Re-running with the same --out_dir resumes from its latest complete checkpoint (on any number of ranks).
"""

from __future__ import annotations

from atb.cli import run_cli
from atb.train.config import PretrainConfig, check_paths


def run(cfg: PretrainConfig) -> None:
    check_paths(cfg)
    from atb.train.pretrain import train

    train(cfg)


if __name__ == "__main__":
    run_cli(PretrainConfig, run, prog="pretrain")

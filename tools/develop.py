"""Further-train K sub-models of a SuperPLM together and export them as Hugging Face folders.

    deepspeed --num_accelerators 2 tools/develop.py --supernet runs/pretrain/supernet \
        --results runs/search/results.json --steps 1000 --out_dir runs/develop
    python tools/develop.py --supernet runs/pretrain/supernet --archs 'L2_H128_A2_Q128_F512' --from_scratch true

Writes runs/develop/models/<arch>/ (config.json, model.safetensors, tokenizer, atb_arch.json),
manifest.json and summary.md. Re-running with the same --out_dir resumes.
"""

from __future__ import annotations

from atb.cli import run_cli
from atb.fsutil import require_path
from atb.train.config import DevelopConfig, check_paths


def run(cfg: DevelopConfig) -> None:
    if cfg.supernet:  # refused before the seconds of heavy imports; train() reports a missing flag itself
        require_path(cfg.supernet, "SuperPLM checkpoint")
    check_paths(cfg)
    from atb.train.develop import train

    train(cfg)


if __name__ == "__main__":
    run_cli(DevelopConfig, run, prog="develop")

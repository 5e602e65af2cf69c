"""Extract sub-networks of a SuperPLM checkpoint into standalone Hugging Face folders.

    python tools/extract.py --checkpoint runs/pretrain/supernet --arch L4_H256_A4_Q256_F1024 --out models/a
    python tools/extract.py --checkpoint runs/pretrain/checkpoints --arch '{"layers": 2, ...}' --out models/b

The checkpoint is a SuperPLM folder or a DeepSpeed checkpoint directory of any ZeRO stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from atb.cli import run_cli
from atb.fsutil import require_path


@dataclass
class ExtractConfig:
    """Extract one arch of a SuperPLM into a Hugging Face folder."""

    checkpoint: str = ""  # SuperPLM folder or DeepSpeed checkpoint dir
    trust_checkpoint: bool = False  # load checkpoint pickles that could run code (only ones you trust)
    arch: str = ""  # name like L4_H256_A4_Q256_F1024, or a JSON object
    out: str = ""  # output folder (must not exist unless --overwrite)
    tokenizer: str | None = None  # tokenizer folder to copy into the export
    overwrite: bool = False  # replace an existing --out folder


def run(cfg: ExtractConfig) -> None:
    from atb.space import Arch

    for flag in ("checkpoint", "arch", "out"):
        if not getattr(cfg, flag):
            raise ValueError(f"--{flag} is required")
    arch = Arch.parse(cfg.arch)
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise FileExistsError(f"output folder {cfg.out} already exists; choose another or pass --overwrite")
    # torch and transformers take seconds to import: a mistyped flag or path is refused before that
    require_path(cfg.checkpoint, "SuperPLM checkpoint")
    from atb.model.extract import extract
    from atb.train.consolidate import load_supernet_or_checkpoint

    model, meta = load_supernet_or_checkpoint(cfg.checkpoint, cfg.trust_checkpoint)
    model.space.validate(arch)
    provenance = {"source_checkpoint": str(Path(cfg.checkpoint).resolve()), "source_step": meta.get("step")}
    out = extract(model, arch, cfg.out, tokenizer=cfg.tokenizer or meta.get("tokenizer"),
                  provenance=provenance, overwrite=cfg.overwrite)
    print(f"extracted {arch.name} -> {out}")


if __name__ == "__main__":
    run_cli(ExtractConfig, run, prog="extract")

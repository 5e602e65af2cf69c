"""Downstream fine-tuning of exported models: GLUE-style classification/regression and SQuAD-style QA.

    from atb.finetune import FinetuneConfig, finetune
    metrics = finetune(FinetuneConfig(model="models/a", task="movie_sentiment", out_dir="runs/ft/a"))
"""

from __future__ import annotations

from typing import Any

from atb.finetune.config import FinetuneConfig, check_inputs, finished_record


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and evaluate; writes `<out_dir>/metrics.json` and `<out_dir>/model` (see runner.py)."""
    finished = finished_record(cfg)
    if finished is not None:
        print(f"finetune: already complete: {cfg.out_dir} holds this run's results; nothing was changed "
              "(pass --overwrite true to redo it)")
        return finished
    check_inputs(cfg)
    if cfg.seeds:
        from atb.finetune.seeds import finetune_seeds

        return finetune_seeds(cfg, finetune)
    from atb.finetune.runner import (
        finetune as run,  # transformers is imported only when a run starts
    )

    return run(cfg)


__all__ = ["FinetuneConfig", "finetune"]

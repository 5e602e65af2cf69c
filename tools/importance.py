"""Score the attention heads, FFN neurons and hidden channels of a BERT-family folder on calibration text,
and write importance.json plus the importance-ordered copy of the folder (the same function, its most
important units first).

    python tools/importance.py --source my_bert/ --corpus my_corpus/ --out_dir runs/importance
    torchrun --nproc_per_node 4 tools/importance.py --source my_bert/ ...   # batches split over the ranks

`tools/pretrain.py --init_from my_bert/` does the same before pre-training; pass it
`--importance_file runs/importance/importance.json` to reuse these scores instead of recomputing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from atb.cli import run_cli


@dataclass
class ImportanceConfig:
    """Importance of a BERT-family folder's units on calibration batches, and its ordered copy."""

    source: str = ""  # BERT-family transformers folder (bert, or an atb export)
    out_dir: str = "runs/importance"  # gets importance.json and source_ordered/
    corpus: list[str] = field(default_factory=lambda: ["demo"])  # calibration text: files/folders, a saved datasets folder, or demo
    tokenizer: str = "auto"  # auto: the source folder's own tokenizer
    seq_len: int = 128
    calib_samples: int = 256  # calibration sequences, split over the ranks
    micro_batch: int = 8
    estimator: str = "activation"  # activation | taylor
    space: str = "from_model"  # the space the orders serve (from_model, a preset or a spec file)
    hidden_step: int = 0  # from_model space steps (0: automatic)
    ffn_step: int = 0
    head_dim_step: int = 0
    seed: int = 0


def run(cfg: ImportanceConfig) -> None:
    from pathlib import Path

    from atb.train import compress
    from atb.train.config import PretrainConfig
    from atb.train.distributed import init_distributed
    from atb.train.session import prepare_data

    if not cfg.source:
        raise ValueError("--source is required (a BERT-family transformers folder)")
    run_cfg = PretrainConfig(out_dir=cfg.out_dir, init_from=cfg.source, corpus=cfg.corpus, tokenizer=cfg.tokenizer,
                             seq_len=cfg.seq_len, calib_samples=cfg.calib_samples, micro_batch=cfg.micro_batch,
                             importance=cfg.estimator, space=cfg.space, hidden_step=cfg.hidden_step,
                             ffn_step=cfg.ffn_step, head_dim_step=cfg.head_dim_step, seed=cfg.seed,
                             reorder="importance")
    source = compress.resolve_defaults(run_cfg)
    run_cfg.validate()
    space = compress.resolve_space(run_cfg, source)
    compress.preflight(run_cfg, space, source)
    env = init_distributed()
    out = Path(cfg.out_dir)
    tokenizer, blocks = prepare_data(run_cfg, env, out)
    ordered = compress.order_for_run(run_cfg, env, out, blocks["train"], tokenizer, space, source)
    if env.is_main:
        print(f"importance: {out / 'importance.json'}\nordered copy: {ordered}")


if __name__ == "__main__":
    run_cli(ImportanceConfig, run, prog="importance")

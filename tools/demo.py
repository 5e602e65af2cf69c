"""The whole atb pipeline on the built-in demo data, as a user would run it, one tool after another:

    order all-MiniLM-L6-v2's heads, neurons and channels by importance and distil it into a SuperPLM (2 ranks,
    DeepSpeed ZeRO-2) -> measure latency, fit the predictor -> search 3 latency targets -> develop the 3 picks
    (+ BERT-ratio baselines) in one run -> fine-tune each, the source model and a TF-IDF + logistic
    regression baseline on movie_sentiment and sms_spam -> runs/demo/report.md

    make demo                                     # or: .venv/bin/python tools/demo.py
    .venv/bin/python tools/demo.py --size micro   # a minutes-long smoke version (the end-to-end test)

Each stage is skipped when its output already exists, so re-running is cheap and an interrupted demo
continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from atb.cli import run_cli


@dataclass
class DemoConfig:
    """Run the whole atb pipeline on the built-in demo corpus and tasks."""

    out_dir: str = "runs/demo"  # every stage's output and report.md; re-run to continue
    size: str = "demo"  # demo (the whole chain, ~15 min on 2 CPU cores) | micro (the same chain at toy scale)
    targets: list[str] = field(default_factory=list)  # speed-ups over the source (default: the size's; demo 2x,4x)
    tasks: list[str] = field(default_factory=lambda: ["movie_sentiment", "sms_spam"])  # built-in tasks or task folders
    corpus: str = "demo"  # pre-training corpus (the built-in one by default)
    source: str = "minilm"  # the BERT-family folder to compress (minilm: all-MiniLM-L6-v2 from the demo extra)
    ranks: int = 2  # processes of the pre-training, search and development runs


def run(cfg: DemoConfig) -> None:
    from atb.demo.pipeline import run_demo

    run_demo(cfg)


if __name__ == "__main__":
    run_cli(DemoConfig, run, prog="demo")

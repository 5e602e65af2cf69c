"""Stages of `make demo`, each a real tool invocation whose output the next stage reads.

Sizes are chosen so the demo (install included) fits in ~15 minutes on a 2-core CPU; `micro` is the same
chain at toy scale for the end-to-end test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atb.demo.report import finetune_dir, write_report

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sizes:
    pretrain_steps: int
    micro_batch: int
    seq_len: int
    latency_archs: int
    search_preset: str
    search_generations: int
    dev_batches: int
    develop_steps: int
    finetune_epochs: float
    finetune_train: int
    finetune_eval: int
    latency_flags: tuple = ()  # extra `latency measure` / `fit` flags (the micro size times less carefully)
    fit_flags: tuple = ()
    targets: str = "2x,4x,8x"  # speed-ups over the largest arch; reachable at this size's sequence length
    space: str = "demo"


SIZES = {
    # Sized for ~15 min on 2 CPU cores including install (measured: bench/RESULTS.md). The pre-training
    # loss flattens after ~100 steps at this size (7.0 at step 80, 6.9 at 300), and developing 6 students
    # (3 picks + 3 BERT-ratio baselines) costs ~4 s a step, so those two budgets are the ones kept short.
    # Fine-tuning needs ~280 steps at lr 1e-3: with fewer (94 at 1500 x 2 epochs) or at lr 1e-4 the
    # models stayed at the majority class on movie_sentiment. Even so 0-2 of 12 runs end there, at lr 5e-4
    # too (other models); those are restarted with the next seed (finetune_models.py).
    "demo": Sizes(pretrain_steps=120, micro_batch=16, seq_len=128, latency_archs=40, search_preset="tiny",
                  search_generations=4, dev_batches=4, develop_steps=24, finetune_epochs=3.0, finetune_train=3000,
                  finetune_eval=500),
    "micro": Sizes(pretrain_steps=4, micro_batch=4, seq_len=32, latency_archs=6, search_preset="tiny",
                   search_generations=1, dev_batches=1, develop_steps=3, finetune_epochs=1.0, finetune_train=64,
                   finetune_eval=64, latency_flags=("--repeats", 3, "--warmup", 1, "--min_time_s", 0, "--seq", 32,
                                                         "--probe", "false"),
                   fit_flags=("--ensemble", 1, "--ridge", 1e-3), targets="1.5x,2x,3x"),
}


def _env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    return env


def precision_config(stage: int = 2) -> str:
    """bf16 on GPUs; fp32 on CPUs, where bf16 matmuls without AVX-512 BF16/AMX are far slower."""
    import torch

    return f"zero{stage}_bf16" if torch.cuda.is_available() else f"zero{stage}_fp32"


def tool(name: str, *args: Any, ranks: int = 1, threads: int | None = None) -> None:
    """Run tools/<name>.py (under torchrun for several ranks); its output streams to the console."""
    script = str(REPO / "tools" / f"{name}.py")
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), script]
    else:
        cmd = [sys.executable, script]
    _run(name, cmd + [str(a) for a in args], threads)


def module(args: list[Any]) -> None:
    """Run `python -m <module> <args>`, output streaming to the console."""
    _run(str(args[0]), [sys.executable, "-m"] + [str(a) for a in args], None)


def _run(name: str, cmd: list[str], threads: int | None) -> None:
    env = _env()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(cmd, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"demo: stage '{name}' failed (exit {proc.returncode}): {' '.join(cmd)}")


class Stages:
    def __init__(self, out: Path, sizes: Sizes, cfg):
        self.out, self.sizes, self.cfg = out, sizes, cfg
        self.timings: dict[str, float] = {}

    def stage(self, name: str, done: Path, fn) -> None:
        if done.exists():
            print(f"\n=== {name}: reusing {done}", flush=True)
            return
        print(f"\n=== {name}", flush=True)
        t0 = time.perf_counter()
        fn()
        self.timings[name] = round(time.perf_counter() - t0, 1)
        print(f"=== {name} done in {self.timings[name]:.0f} s", flush=True)

    def pretrain(self) -> None:
        s = self.sizes
        threads = max(1, (os.cpu_count() or 2) // self.cfg.ranks)
        tool("pretrain", "--out_dir", self.out / "pretrain", "--space", s.space, "--corpus", self.cfg.corpus,
             "--data_cache", self.out / "data_cache", "--ds_config", precision_config(),
             "--steps", s.pretrain_steps, "--micro_batch", s.micro_batch, "--seq_len", s.seq_len, "--lr", 1e-3,
             "--warmup_steps", max(1, s.pretrain_steps // 10), "--save_every", s.pretrain_steps,
             "--log_every", max(1, s.pretrain_steps // 50), "--report_to", "tensorboard",
             ranks=self.cfg.ranks, threads=threads)

    def latency(self) -> None:
        s, lat = self.sizes, self.out / "latency"
        tool("latency", "measure", "--space", s.space, "--n", s.latency_archs, "--out", lat / "table.jsonl",
             "--threads", 1, *(s.latency_flags or ("--seq", 128)))
        tool("latency", "fit", "--table", lat / "table.jsonl", "--out", lat / "predictor", *s.fit_flags)

    def search(self) -> None:
        s = self.sizes
        tool("search", "--checkpoint", self.out / "pretrain" / "supernet", "--predictor",
             self.out / "latency" / "predictor", "--targets", ",".join(self.cfg.targets) or s.targets, "--out_dir", self.out / "search",
             "--preset", s.search_preset, "--corpus", self.cfg.corpus, "--generations", s.search_generations,
             "--dev_batches", s.dev_batches,
             "--batch_size", s.micro_batch, ranks=self.cfg.ranks, threads=1)

    def develop(self) -> None:
        from atb.demo.baseline import picks_with_baselines

        s = self.sizes
        picks = self.out / "develop_picks.json"
        picks_with_baselines(self.out / "search" / "results.json", self.out / "latency" / "predictor", s.space, picks)
        tool("develop", "--supernet", self.out / "pretrain" / "supernet", "--results", picks,
             "--corpus", self.cfg.corpus, "--data_cache", self.out / "data_cache",
             "--predictor", self.out / "latency" / "predictor", "--out_dir", self.out / "develop",
             "--steps", s.develop_steps, "--micro_batch", s.micro_batch, "--seq_len", s.seq_len, "--lr", 5e-4,
             "--warmup_steps", max(1, s.develop_steps // 10), "--save_every", s.develop_steps,
             "--ds_config", precision_config(), "--report_to", "tensorboard", ranks=self.cfg.ranks, threads=1)

    def finetune(self) -> None:
        """Every (task, model) pair without results, fine-tuned in one process (see finetune_models.py)."""
        s = self.sizes
        manifest = json.loads((self.out / "develop" / "manifest.json").read_text())
        runs = []
        for task in task_names(self.cfg.tasks):
            for row in manifest["models"]:
                dest = finetune_dir(self.out, task, row["arch_name"])
                if not (dest / "metrics.json").exists():
                    runs.append({"model": str(row["path"]), "task": task, "out_dir": str(dest),
                                 "epochs": s.finetune_epochs, "max_train_samples": s.finetune_train,
                                 "max_eval_samples": s.finetune_eval, "max_seq_len": 64, "lr": 1e-3,
                                 "batch_size": 32, "overwrite": True, "restarts": 2})
        spec = self.out / "finetune" / "runs.json"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(json.dumps(runs, indent=1))
        module(["atb.demo.finetune_models", spec])


def task_names(tasks: list[str]) -> list[str]:
    if not tasks:
        raise ValueError("--tasks needs at least one task (e.g. movie_sentiment,sms_spam)")
    return tasks


def _model_names(out: Path) -> list[str]:
    manifest = out / "develop" / "manifest.json"
    return [row["arch_name"] for row in json.loads(manifest.read_text())["models"]] if manifest.is_file() else []


class _AllExist:
    """A stage's done-marker made of several files (one metrics.json per task and model)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def exists(self) -> bool:
        return bool(self.paths) and all(p.exists() for p in self.paths)

    def __str__(self) -> str:
        return f"{len(self.paths)} existing fine-tuning results"


def run_demo(cfg) -> Path:
    if cfg.size not in SIZES:
        raise ValueError(f"--size must be one of {sorted(SIZES)}, got {cfg.size!r}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, SIZES[cfg.size], cfg)
    t0 = time.perf_counter()
    stages.stage("1/5 pre-train the SuperPLM", out / "pretrain" / "supernet" / "supernet.json", stages.pretrain)
    stages.stage("2/5 measure latency, fit the predictor", out / "latency" / "predictor", stages.latency)
    stages.stage("3/5 search the latency targets", out / "search" / "results.json", stages.search)
    stages.stage("4/5 develop the picks in one run", out / "develop" / "manifest.json", stages.develop)
    tasks = task_names(cfg.tasks)
    done = [finetune_dir(out, t, arch) for t in tasks for arch in _model_names(out)]
    stages.stage("5/5 fine-tune on " + ", ".join(Path(t).name for t in tasks),
                 _AllExist([d / "metrics.json" for d in done]), stages.finetune)
    report = write_report(out, [Path(t).name for t in tasks], stages.timings, time.perf_counter() - t0)
    print(f"\nreport: {report}")
    return report

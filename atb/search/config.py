"""Arguments of a search run (`tools/search.py --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atb.search.settings import METHODS, Band, EvolutionSettings, settings_from

FITNESSES = ("mlm", "kd", "cka", "finetune")


@dataclass
class SearchConfig:
    """Search sub-architectures of a SuperPLM for one or more latency targets (evolution, random or fast)."""

    checkpoint: str = ""  # SuperPLM folder, or an atb DeepSpeed checkpoint dir of any ZeRO stage
    trust_checkpoint: bool = False  # load checkpoint pickles that could run code (only ones you trust)
    out_dir: str = "runs/search"  # state, journal, results.json, candidates.jsonl, pareto.png; re-run to resume
    targets: list[str] = field(default_factory=list)  # e.g. 4x,8x (speed-ups over the largest arch) or 12ms,20ms
    predictor: str = "flops"  # saved atb latency predictor, or 'flops' (a FLOPs proxy: targets as 4x or in GFLOPs)
    runtime: str = ""  # if given, the predictor must be of this runtime (torch, onnxruntime, onnxruntime-int8)
    band_low: float = 0.85  # a candidate for target T predicts at least band_low * T (the paper's band)
    band_high: float = 1.1  # a candidate for target T predicts at most band_high * T
    space: str = ""  # part of the SuperPLM's space (preset or YAML/JSON spec), or all; default: all, or for a compressed SuperPLM the whole hidden width and >= 1/4 of FFN and qkv
    method: str = "evolution"  # evolution | random | fast (the paper's AutoTinyBERT-Fast rule)
    preset: str = "hat"  # evolution settings: hat | autotinybert | tiny (single flags below override)
    population: int | None = None  # first generation: random in-band archs per target
    parents: int | None = None  # the best in-band archs of a target that breed its next generation
    mutations: int | None = None  # children made by mutating one parent, per target and generation
    crossovers: int | None = None  # children made by crossing two parents, per target and generation
    mutation_prob: float | None = None  # chance that each field of a mutated child changes
    explore_rate: float | None = None  # chance that a child slot is a fresh random in-band arch instead
    generations: int | None = None  # including the first (random) generation
    parent_selection: str | None = None  # uniform | roulette
    mutation_style: str | None = None  # resample | step
    budget: int = 0  # random/fast: candidates per target (0 = what evolution would evaluate)
    seed: int = 0  # of the proposals (evolution, random sampling)
    # fitness
    fitness: str = "auto"  # auto (the SuperPLM's own objective: kd for a distilled one, else mlm) | mlm | kd (dev loss on held-out corpus blocks) | cka (likeness to the teacher's representation there) | finetune (quick fine-tune on --task)
    # the data settings below default to those the checkpoint recorded when it was pre-trained
    corpus: list[str] | None = None  # the pre-training corpus (its dev split is held out from training)
    dev_data: str = ""  # instead of --corpus: a safetensors file of masked dev batches (atb.search.dev_data.save_dev_batches)
    tokenizer: str | None = None  # default: the checkpoint's tokenizer
    seq_len: int | None = None  # default: the checkpoint's
    dev_fraction: float | None = None  # must match pre-training so the dev blocks are really held out
    data_seed: int | None = None  # pre-training's --seed (it splits train/dev)
    batch_size: int = 16  # dev batch size of the loss fitness
    dev_batches: int = 0  # cap on dev batches per evaluation (0 = all)
    teacher: str | None = None  # kd, cka: transformers encoder folder (default: the teacher the SuperPLM was distilled from)
    task: str | None = None  # finetune: task folder (as tools/finetune.py) or a built-in task, e.g. sms_spam
    finetune_epochs: float = 1.0  # finetune: epochs of each quick fine-tune
    finetune_train_samples: int = 2000  # a seeded subset of the task's train split, the same for every arch
    finetune_eval_samples: int = 500  # a fixed subset of the task's dev split, the same for every arch
    # run control
    stop_after_generation: int = 0  # > 0: stop after this many generations (continue by re-running)
    plot: bool = True  # write pareto.png
    progress: bool = True  # show a progress bar
    local_rank: int = -1  # set by the deepspeed launcher; LOCAL_RANK from the environment wins

    def adopt_fitness(self, meta: dict[str, Any]) -> None:
        """Resolve `--fitness auto` and a KD/CKA teacher left out from the SuperPLM's record `meta`: a SuperPLM
        distilled from a teacher is searched by its KD loss to that teacher, whose MLM head nothing trained."""
        if self.fitness == "auto":
            self.fitness = "kd" if meta.get("objective") == "kd" and meta.get("teacher") else "mlm"
        if self.fitness in ("kd", "cka") and not self.teacher:
            self.teacher = meta.get("teacher")
            if not self.teacher:
                raise ValueError(f"--fitness {self.fitness} needs --teacher (the transformers encoder the SuperPLM "
                                 f"was distilled from); {self.checkpoint} records none")

    def evolution_settings(self) -> EvolutionSettings:
        names = ("population", "parents", "mutations", "crossovers", "mutation_prob", "explore_rate", "generations",
                 "parent_selection", "mutation_style")
        return settings_from(self.preset, {n: getattr(self, n) for n in names})

    def band(self) -> Band:
        return Band(self.band_low, self.band_high).validate()

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint is required (a SuperPLM folder or a DeepSpeed checkpoint dir)")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.fitness not in ("auto", *FITNESSES):
            raise ValueError(f"--fitness must be auto or one of {FITNESSES}, got {self.fitness!r}")
        if self.fitness == "finetune" and not self.task:
            raise ValueError("--fitness finetune needs --task (a task folder with train/dev files, or a built-in task)")
        for name in ("budget", "dev_batches", "stop_after_generation", "seq_len"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not self.targets:
            raise ValueError("--targets is required, e.g. --targets 4x,8x")
        self.band()
        self.evolution_settings()

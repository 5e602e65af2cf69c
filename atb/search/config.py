"""Arguments of a search run (`tools/search.py --help` lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from atb.search.settings import METHODS, Band, EvolutionSettings, settings_from

FITNESSES = ("mlm", "kd", "finetune")


@dataclass
class SearchConfig:
    """Search sub-architectures of a SuperPLM for one or more latency targets (evolution, random or fast)."""

    checkpoint: str = ""  # SuperPLM folder, or an atb DeepSpeed checkpoint dir of any ZeRO stage
    out_dir: str = "runs/search"  # state, journal, results.json, candidates.jsonl, pareto.png; re-run to resume
    targets: str = ""  # comma-separated: '4x,8x' (speed-up over the largest arch) or '12ms,20ms'
    predictor: str = "flops"  # saved atb latency predictor, or 'flops' (a FLOPs proxy; targets as 'Nx')
    runtime: str = ""  # if given, the predictor must be of this runtime (torch, onnxruntime, onnxruntime-int8)
    band_low: float = 0.85  # an arch is a candidate for target T if its predicted latency is in
    band_high: float = 1.1  # [band_low * T, band_high * T] (the paper's band)
    method: str = "evolution"  # evolution | random | fast (the paper's AutoTinyBERT-Fast rule)
    preset: str = "hat"  # evolution settings: hat | autotinybert | tiny (single flags below override)
    population: int | None = None
    parents: int | None = None
    mutations: int | None = None
    crossovers: int | None = None
    mutation_prob: float | None = None
    explore_rate: float | None = None
    generations: int | None = None
    parent_selection: str | None = None  # uniform | roulette
    mutation_style: str | None = None  # resample | step
    budget: int = 0  # random/fast: candidates per target (0 = what evolution would evaluate)
    seed: int = 0
    # fitness
    fitness: str = "mlm"  # mlm | kd (dev loss on held-out corpus blocks) | finetune (quick fine-tune on --task)
    corpus: str = "demo"  # the pre-training corpus (its dev split is held out from training)
    dev_data: str = ""  # instead of --corpus: a safetensors file of masked dev batches (atb.evaluate.save_dev_batches)
    tokenizer: str = ""  # default: the checkpoint's tokenizer
    seq_len: int = 0  # 0: the checkpoint's
    dev_fraction: float = 0.01  # must match pre-training so the dev blocks are really held out
    data_seed: int = 0  # pre-training's --seed (it splits train/dev)
    batch_size: int = 16
    dev_batches: int = 0  # cap on dev batches per evaluation (0 = all)
    teacher: str | None = None  # kd: transformers encoder folder
    task: str | None = None  # finetune: task folder (as tools/finetune.py) or a built-in task, e.g. sms_spam
    finetune_epochs: float = 1.0
    finetune_train_samples: int = 2000  # a seeded subset of the task's train split, the same for every arch
    finetune_eval_samples: int = 500
    # run control
    stop_after_generation: int = 0  # > 0: stop after this many generations (continue by re-running)
    plot: bool = True
    progress: bool = True
    local_rank: int = -1  # set by the deepspeed launcher; LOCAL_RANK from the environment wins

    def evolution_settings(self) -> EvolutionSettings:
        names = ("population", "parents", "mutations", "crossovers", "mutation_prob", "explore_rate", "generations",
                 "parent_selection", "mutation_style")
        return settings_from(self.preset, {n: getattr(self, n) for n in names})

    def band(self) -> Band:
        return Band(self.band_low, self.band_high).validate()

    def target_list(self) -> list[str]:
        return [t.strip() for t in str(self.targets).split(",") if t.strip()]

    def validate(self) -> None:
        if not self.checkpoint:
            raise ValueError("--checkpoint is required (a SuperPLM folder or a DeepSpeed checkpoint dir)")
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {METHODS}, got {self.method!r}")
        if self.fitness not in FITNESSES:
            raise ValueError(f"--fitness must be one of {FITNESSES}, got {self.fitness!r}")
        if self.fitness == "kd" and not self.teacher:
            raise ValueError("--fitness kd needs --teacher (the transformers encoder the SuperPLM was distilled from)")
        if self.fitness == "finetune" and not self.task:
            raise ValueError("--fitness finetune needs --task (a task folder with train/dev files, or a built-in task)")
        for name in ("budget", "dev_batches", "stop_after_generation", "seq_len"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")
        if not self.target_list():
            raise ValueError("--targets is required, e.g. --targets 4x,8x")
        self.band()
        self.evolution_settings()

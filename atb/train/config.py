"""Arguments of atb's DeepSpeed training runs, pre-training and development (each tool's `--help` lists them),
and the checks that need no heavy imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from atb.deploy.runtime import check_runtime

HELD_OUT_EVERY = 4  # every fourth calibration block judges develop's refits instead of making them


@dataclass
class TrainConfig:
    """What every DeepSpeed training run of atb shares: data, optimisation, checkpoints, tracking."""

    out_dir: str = "runs/pretrain"  # run directory: config, logs, checkpoints/, outputs
    # data
    corpus: list[str] = field(default_factory=lambda: ["demo"])  # text files/folders, a saved datasets folder, or demo
    tokenizer: str = "auto"  # transformers tokenizer folder, "demo" (bert-base-uncased vocab), or auto: the --init_from folder's, else demo
    train_tokenizer_vocab: int = 0  # > 0: train a WordPiece tokenizer of this size on the corpus instead
    seq_len: int = 128  # tokens per training block
    dev_fraction: float = 0.01  # share of corpus blocks held out as the dev split
    num_proc: int = 1  # processes for tokenisation (datasets.map)
    data_cache: str = ""  # tokenised-corpus cache (default <out_dir>/data_cache); jobs on one corpus can share it
    dropout: float = 0.1  # hidden and attention dropout
    objective: str = "auto"  # mlm | kd | auto: kd from the source when compressing (--init_from a transformers folder), else mlm
    teacher: str | None = None  # transformers encoder folder (kd)
    # optimisation
    steps: int = 1000  # total optimizer steps of the run (sets the LR schedule)
    stop_at_step: int = 0  # > 0: checkpoint and stop at this step (time-limited jobs); resume later
    micro_batch: int = 8  # per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak learning rate (linear warmup, then linear decay)
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # optimizer steps of linear LR warmup
    grad_clip: float = 1.0  # gradient norm clipping (0: off)
    max_weight: float = 1e4  # a step whose weights reach this |value| (or inf/nan) counts as diverged, is not saved
    ds_config: str = "zero2_bf16"  # name in ds_configs/ or a path
    # checkpoints and tracking
    save_every: int = 500  # checkpoint every N optimizer steps (and at the end)
    keep_last: int = 2  # checkpoints kept on disk (older ones are deleted)
    resume: str = "auto"  # auto: continue from out_dir/checkpoints if present | never | must
    overwrite: bool = False  # a finished run: redo its final evaluation and exports (checkpoints are kept)
    trust_checkpoint: bool = False  # load checkpoint pickles that could run code (only ones you trust)
    eval_every: int = 0  # dev loss of the largest and smallest arch every N steps (0: at the end only)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb or none; several: tensorboard,wandb
    wandb_project: str = "atb"  # W&B project (offline unless WANDB_MODE=online)
    log_every: int = 10  # log training metrics every N optimizer steps
    seed: int = 0  # data order, masks, sampled archs and the train/dev split
    local_rank: int = -1  # set by the deepspeed launcher; LOCAL_RANK from the environment wins

    def validate(self) -> None:
        if self.objective not in ("mlm", "kd", "auto"):
            raise ValueError(f"--objective must be mlm, kd or auto, got {self.objective!r}")
        if self.objective == "kd" and not self.teacher:
            raise ValueError("--objective kd needs --teacher (a transformers encoder folder)")
        if self.resume not in ("auto", "never", "must"):
            raise ValueError(f"--resume must be auto, never or must, got {self.resume!r}")
        for name in ("steps", "micro_batch", "grad_accum", "seq_len", "save_every", "log_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:  # None: taken from a SuperPLM
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class PretrainConfig(TrainConfig):
    """Pre-train a SuperPLM with DeepSpeed (MLM or KD; uniform or sandwich arch sampling)."""

    space: str = "auto"  # preset name, YAML/JSON spec file, from_model (derived from --init_from); auto: from_model when compressing, else demo
    hidden_step: int = 0  # from_model space: hidden-size step (0: about 12 sizes)
    ffn_step: int = 0  # from_model space: FFN-size step (0: about 16 sizes)
    head_dim_step: int = 0  # from_model space: step of each head's qkv dims (0: about 8 sizes)
    max_positions: int = 0  # 0: the source's when compressing, else 512
    init_from: str | None = None  # BERT-family transformers folder to compress, or a SuperPLM folder to continue
    reorder: str = "auto"  # importance | none (plain copy of the leading weights); auto: importance when compressing
    importance: str = "activation"  # importance estimator: activation | taylor
    calib_samples: int = 256  # calibration sequences (training blocks) for importance, split over the ranks
    importance_file: str = ""  # importance.json to reuse or write (default <out_dir>/importance.json)
    sampling: str = "uniform"  # uniform | sandwich | fixed
    sandwich_random: int = 2  # random archs per step besides largest and smallest (sandwich)
    inplace_distill: bool = False  # sandwich + mlm: distil the largest arch's predictions into the others
    fixed_archs: list[str] = field(default_factory=list)  # sampling=fixed: arch names (or JSON), comma-separated

    def validate(self) -> None:
        super().validate()
        if self.reorder not in ("importance", "none"):
            raise ValueError(f"--reorder must be importance, none or auto, got {self.reorder!r}")
        if self.importance not in ("activation", "taylor"):
            raise ValueError(f"--importance must be activation or taylor, got {self.importance!r}")
        if self.calib_samples < 1:
            raise ValueError(f"--calib_samples must be >= 1, got {self.calib_samples}")
        if self.seq_len > self.max_positions:
            raise ValueError(f"--seq_len {self.seq_len} exceeds --max_positions {self.max_positions}")
        if self.inplace_distill and (self.sampling != "sandwich" or self.objective != "mlm"):
            raise ValueError("--inplace_distill needs --sampling sandwich and --objective mlm")


@dataclass
class DevelopConfig(TrainConfig):
    """Further-train K sub-models of a SuperPLM together (one engine, one data pipeline, one teacher)."""

    out_dir: str = "runs/develop"
    supernet: str = ""  # SuperPLM folder or DeepSpeed checkpoint dir
    archs: list[str] = field(default_factory=list)  # explicit archs: names (or JSON objects), comma-separated
    results: str = ""  # a search results.json: develop its per-target picks
    targets: list[str] = field(default_factory=list)  # 12ms,6ms or 4x,8x: run the fast search first (needs --predictor)
    predictor: str = ""  # latency predictor folder (targets; predicted latency in the report)
    from_scratch: bool = False  # same archs, random initialisation (the paper's comparison)
    reconstruct: bool = True  # compressed SuperPLM: first refit each student's output projections and LayerNorms to the source (least squares)
    calib_samples: int = 256  # training blocks that --reconstruct fits on (a quarter of them judge the fit), split over the ranks
    measure_latency: bool = True  # time each exported model (settings and runtime of the predictor when given)
    runtime: str = ""  # torch, onnxruntime or onnxruntime-int8; must match the predictor's when both are given
    steps: int = 500  # total optimizer steps of the run (sets the LR schedule)
    lr: float = 5e-5  # peak learning rate (linear warmup, then linear decay)
    warmup_steps: int = 50  # optimizer steps of linear LR warmup
    # unset: the data settings the SuperPLM recorded when it was pre-trained
    corpus: list[str] | None = None  # the pre-training corpus
    tokenizer: str | None = None  # tokenizer folder
    seq_len: int | None = None  # tokens per block
    dev_fraction: float | None = None  # held-out share of the corpus blocks
    seed: int | None = None  # pre-training's --seed (it splits train/dev and orders the data)

    def validate(self) -> None:
        super().validate()
        if not self.supernet:
            raise ValueError("--supernet is required (a SuperPLM folder or DeepSpeed checkpoint)")
        if sum(bool(x) for x in (self.archs, self.results, self.targets)) != 1:
            raise ValueError("give exactly one of --archs, --results or --targets")
        if self.targets and not self.predictor:
            raise ValueError("--targets needs --predictor (a latency predictor from tools/latency.py fit)")
        if self.runtime:
            check_runtime(self.runtime)
        if self.reconstruct and self.calib_samples < 2 * HELD_OUT_EVERY:
            raise ValueError(f"--calib_samples must be >= {2 * HELD_OUT_EVERY} with --reconstruct, got {self.calib_samples}")


def check_paths(cfg: TrainConfig) -> None:
    """The input checks that need no heavy imports, so that a mistyped path fails in a fraction of a second
    (the loaders check again, with everything else)."""
    for item in cfg.corpus or []:  # None: develop takes the SuperPLM's recorded corpus
        if str(item) != "demo" and not Path(item).exists():
            raise FileNotFoundError(f"corpus {item} not found")
    if cfg.tokenizer not in (None, "auto", "demo") and not Path(cfg.tokenizer).is_dir():
        raise FileNotFoundError(f"tokenizer folder {cfg.tokenizer} not found")

"""What a fine-tuning run needs, as one typed dataclass (filled by tools/finetune.py or by callers)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

# These modules, like this one, import only the standard library, so the CLI's input checks stay instant.
from atb.deploy.runtime import ORT_FP32, ORT_INT8, check_onnx_installed
from atb.finetune.files import task_dir

TASK_TYPES = ("auto", "classification", "regression", "qa")
POOLINGS = ("auto", "cls", "mean")
DEPLOY_RUNTIMES = ("none", ORT_FP32, ORT_INT8)


@dataclass
class FinetuneConfig:
    """Fine-tune an exported model folder on a GLUE-style or SQuAD-style task and report dev metrics."""

    model: str = ""  # exported Hugging Face folder (vanilla bert or atb_tinybert), or tfidf: the bag-of-words baseline
    task: str = ""  # folder with train/dev[/test] files, or a built-in task: movie_sentiment, sms_spam
    out_dir: str = ""  # gets metrics.json and model/ (the fine-tuned model); must not exist unless --overwrite
    task_type: str = "auto"  # auto | classification | regression | qa
    text_columns: list[str] | None = None  # e.g. sentence, or sentence1,sentence2; auto-detected if unset
    label_column: str | None = None  # auto: label, gold_label, Quality or score
    columns: list[str] | None = None  # names of a headerless TSV/CSV's columns, in file order
    has_header: bool | None = None  # TSV/CSV first row is a header; None = detect from the column names
    train_file: str | None = None  # override the file found in --task (any of tsv/csv/jsonl/json[.gz])
    dev_file: str | None = None  # override the dev file found in --task
    test_file: str | None = None  # evaluated too when it has labels
    eval_test: bool = True  # also score the test split (found in --task or given) when it has labels
    tokenizer: str | None = None  # tokenizer folder when the export has none
    max_seq_len: int = 128  # tokens per example (longer ones are truncated; QA: window length)
    doc_stride: int = 32  # QA: tokens shared by consecutive windows over a long context
    max_answer_len: int = 30  # QA: longest answer span in tokens
    epochs: float = 3.0  # passes over the training split
    lr: float = 5e-5  # peak learning rate (linear warmup and decay)
    batch_size: int = 32  # training batch per device
    group_by_length: bool = False  # batch training examples of similar length: less padding, but batches skew when length predicts the label
    eval_batch_size: int = 64  # evaluation batch per device
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_ratio: float = 0.1  # share of all steps spent in linear LR warmup
    seed: int = 42  # initialisation of the task head, data order and dropout
    seeds: list[int] | None = None  # one run per seed (<out_dir>/seed_<n>), scored by their mean and spread
    pooling: str = "auto"  # what the classifier reads: cls, mean over tokens (bert and atb exports), or auto (the folder's own: mean for sentence-transformers mean-pooling BERTs)
    freeze_embeddings: bool = False  # keep the word embeddings as pre-trained (small training sets; much cheaper for tiny models)
    max_train_samples: int | None = None  # a seeded random subset of train, for speed
    max_eval_samples: int | None = None  # a fixed random subset of dev/test, for speed
    ds_config: str | None = None  # DeepSpeed JSON (path or ds_configs/ name) for TrainingArguments(deepspeed=...)
    bf16: bool = False  # without DeepSpeed; with it the DeepSpeed config decides
    teacher: str | None = None  # the source fine-tuned on this task (its out_dir/model): also learn its outputs (task distillation)
    kd_alpha: float = 0.5  # with --teacher: weight of the teacher's soft targets in the loss (the labels get the rest)
    kd_temperature: float = 2.0  # with --teacher: softmax temperature of the soft targets
    unlabelled_file: str | None = None  # with --teacher: more of the task's text without labels (the train file's columns; QA: SQuAD JSON, answers unread), learnt from the teacher's outputs alone
    teacher_cache: str | None = None  # with --teacher: a folder keeping the teacher's outputs, which later runs with the same teacher and rows read (several students of one teacher)
    deploy: str = "none"  # onnxruntime or onnxruntime-int8: also export the fine-tuned model to ONNX (int8: quantized) and score it there
    report_to: list[str] = field(default_factory=lambda: ["none"])  # Trainer integrations: none, tensorboard, wandb
    logging_steps: int = 50  # Trainer logs every N steps
    overwrite: bool = False  # replace an existing --out_dir
    trust_remote_code: bool = False  # run the model folder's own code even if it is not atb's unmodified file

    def validate(self) -> None:
        for name in ("model", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        if not self.task and not (self.train_file and self.dev_file):
            raise ValueError("--task is required (a folder or a built-in task), or both --train_file and --dev_file")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.deploy not in DEPLOY_RUNTIMES:
            raise ValueError(f"--deploy must be one of {DEPLOY_RUNTIMES}, got {self.deploy!r}")
        if self.deploy != "none" and self.model == "tfidf":
            raise ValueError("--deploy: the tfidf baseline has no neural model to export")
        if self.teacher is not None and self.model == "tfidf":
            raise ValueError("--teacher: the tfidf baseline does not learn from a teacher")
        if self.unlabelled_file is not None and self.teacher is None:
            raise ValueError("--unlabelled_file needs --teacher: the teacher's outputs are what those rows teach")
        if self.teacher_cache is not None and self.teacher is None:
            raise ValueError("--teacher_cache needs --teacher: it keeps the teacher's outputs")
        if not 0 < self.kd_alpha <= 1:
            raise ValueError(f"--kd_alpha must be in (0, 1], got {self.kd_alpha}")
        if self.kd_temperature <= 0:
            raise ValueError(f"--kd_temperature must be positive, got {self.kd_temperature}")
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"--task_type must be one of {TASK_TYPES}, got {self.task_type!r}")
        positive = {"max_seq_len": self.max_seq_len, "batch_size": self.batch_size,
                    "eval_batch_size": self.eval_batch_size, "epochs": self.epochs, "lr": self.lr,
                    "max_answer_len": self.max_answer_len, "logging_steps": self.logging_steps}
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"--{name} must be positive, got {value}")
        if self.doc_stride < 0:
            raise ValueError(f"--doc_stride must be >= 0, got {self.doc_stride}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) < len(self.seeds)):
            raise ValueError(f"--seeds takes distinct seeds, e.g. 0,1,2; got {self.seeds}")
        if self.text_columns is not None and not self.text_columns:
            raise ValueError("--text_columns is empty; give one or two column names")
        if self.text_columns is not None and len(self.text_columns) > 2:
            raise ValueError(f"--text_columns takes one or two columns, got {self.text_columns}")


def finished_record(cfg: FinetuneConfig) -> dict | None:
    """metrics.json of an earlier run of this very config in --out_dir: a re-run has nothing left to do."""
    path = Path(cfg.out_dir) / "metrics.json"
    if cfg.overwrite or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    def settings(config: dict) -> dict:  # these say where files go, not how the run goes
        return {k: v for k, v in config.items() if k not in ("overwrite", "teacher_cache")}

    wanted = settings(json.loads(json.dumps(dataclasses.asdict(cfg))))
    same = isinstance(record, dict) and isinstance(record.get("config"), dict) and settings(record["config"]) == wanted
    deploy_failed = same and "error" in (record.get("deployed") or {})  # the run did not finish what it was asked
    return record if same and not deploy_failed else None


def check_inputs(cfg: FinetuneConfig) -> None:
    """The checks that need no heavy imports, so that a mistyped flag fails in a fraction of a second."""
    cfg.validate()
    if Path(cfg.out_dir).exists() and not cfg.overwrite:
        raise FileExistsError(f"output folder {cfg.out_dir} already exists; choose another or pass --overwrite")
    if cfg.model != "tfidf" and not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(f"model folder {cfg.model} not found or has no config.json")
    if cfg.teacher is not None and not (Path(cfg.teacher) / "config.json").is_file():
        raise FileNotFoundError(f"--teacher {cfg.teacher} not found or has no config.json")
    if cfg.unlabelled_file is not None and not Path(cfg.unlabelled_file).expanduser().is_file():
        raise FileNotFoundError(f"--unlabelled_file {cfg.unlabelled_file} not found")
    if cfg.task:
        task_dir(cfg.task)
    if cfg.deploy != "none":  # found before training, not after it
        check_onnx_installed(f"--deploy {cfg.deploy}")

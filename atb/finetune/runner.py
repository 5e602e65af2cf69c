"""One fine-tuning run: task files + exported folder → Trainer → dev metrics, metrics.json and model/.

The output folder appears complete or not at all: everything is written to `.<out_dir>.partial` beside
it and renamed at the end. The staging name is fixed (not random) so that every rank of a distributed
run (DeepSpeed or torchrun) saves into the same place; only the main process writes files of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from atb.cli import config_record
from atb.data.tokenizer import VOCAB_FILES, has_vocabulary
from atb.finetune import classification, distill, qa
from atb.finetune.bow_baseline import BOW_MODEL, bow_baseline
from atb.finetune.config import FinetuneConfig, check_inputs
from atb.finetune.evaluation import evaluate, evaluate_deployed, trainer_predict
from atb.finetune.remote_code import allow_remote_code
from atb.finetune.tasks import EVAL_SUBSET_SEED, Task, load_task, subsample
from atb.fsutil import open_staging, publish_staging, staging_path, write_json_atomic
from atb.model import tiny
from atb.model.bert_source import declared_pooling
from atb.model.extract import ARCH_JSON, MODELING_FILE, MODELING_MODULE, count_params, tinybert_config
from atb.train import ds_config as ds
from atb.train.distributed import init_distributed


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune `cfg.model` on `cfg.task`; returns what it writes to `<out_dir>/metrics.json`."""
    check_inputs(cfg)
    if cfg.model == BOW_MODEL:
        return _publish_baseline(cfg)
    out_dir, model_dir = Path(cfg.out_dir), Path(cfg.model)
    trust_code = allow_remote_code(model_dir, cfg.trust_remote_code)
    task = load_task(cfg)
    if task.task_type == "qa":
        qa.check_window(cfg.max_seq_len, cfg.doc_stride)
    tokenizer = _load_tokenizer(cfg, model_dir, trust_code)
    teacher = distill.load_teacher(Path(cfg.teacher), task, tokenizer, cfg.trust_remote_code) if cfg.teacher else None
    staging = open_staging(out_dir) if os.environ.get("RANK", "0") == "0" else staging_path(out_dir)
    ds_setup = _deepspeed_setup(cfg.ds_config) if cfg.ds_config else (None, {})

    set_seed(cfg.seed)  # the new head's initial weights
    model = _load_model(model_dir, task, tokenizer, cfg, trust_code)
    params = count_params(model)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)

    train_examples = subsample(task.splits["train"], cfg.max_train_samples, cfg.seed)
    # a random subset, not the first rows (task files are often ordered by label), and the same rows for
    # every model and training seed so that scores stay comparable
    eval_examples = {s: subsample(d, cfg.max_eval_samples, EVAL_SUBSET_SEED) for s, d in task.splits.items()
                     if s not in ("train", "unlabelled")}
    labelled_rows = len(train_examples)
    if "unlabelled" in task.splits:
        train_examples = datasets.concatenate_datasets([train_examples, task.splits["unlabelled"]])
    if task.task_type == "qa":
        train_features = qa.encode_train(train_examples, tokenizer, cfg.max_seq_len, cfg.doc_stride)
    else:
        train_features = classification.encode(train_examples, tokenizer, cfg.max_seq_len)

    trainer = _trainer(cfg, model, tokenizer, train_features, staging, task.task_type, *ds_setup)
    if teacher is not None:  # scored on the device the Trainer resolved for this rank
        cache = Path(cfg.teacher_cache).expanduser() if cfg.teacher_cache else None
        trainer.train_dataset = distill.add_teacher_outputs(teacher.to(trainer.args.device), train_features,
                                                            tokenizer, task.task_type, cfg.eval_batch_size, cache)
        del teacher
    started = time.perf_counter()
    train_output = trainer.train()
    train_time = time.perf_counter() - started
    started = time.perf_counter()
    results, qa_predictions = evaluate(trainer_predict(trainer), task, eval_examples, tokenizer, cfg)
    eval_time = time.perf_counter() - started

    record = {
        "task": task.name,
        "task_type": task.task_type,
        "files": {s: str(p.resolve()) for s, p in task.files.items()},
        "model": str(model_dir.resolve()),
        **_provenance(model_dir),
        "params": params,
        **({} if task.task_type == "qa" else {"pooling": getattr(model.config, "classifier_pooling", "cls")}),
        "text_columns": task.text_columns,
        "label_column": task.label_column,
        "labels": task.label_names,
        "sizes": {"train": len(task.splits["train"]), "train_used": labelled_rows,
                  "train_features": len(train_features),
                  **({"unlabelled": len(task.splits["unlabelled"])} if "unlabelled" in task.splits else {}),
                  **{s: len(task.splits[s]) for s in eval_examples},
                  **{f"{s}_used": len(d) for s, d in eval_examples.items()}},
        **results,
        **({"majority_baseline": _baseline(task, eval_examples)} if task.task_type == "classification" else {}),
        "train": {"loss": train_output.training_loss, "steps": train_output.global_step, "epochs": cfg.epochs,
                  "time_s": round(train_time, 2)},
        "eval_time_s": round(eval_time, 2),
        "notes": task.notes,
        **config_record(cfg),
    }
    failed = None
    if _save_model(trainer, staging, model_dir) and cfg.deploy != "none":
        try:
            record["deployed"] = evaluate_deployed(staging / "model", task, eval_examples, tokenizer, cfg)
        except (ValueError, OSError) as err:  # the trained model and its scores are published all the same
            record["deployed"], failed = {"runtime": cfg.deploy, "error": str(err)}, err
    _publish(trainer, staging, out_dir, record, qa_predictions)
    if failed is not None:
        raise ValueError(f"--deploy {cfg.deploy} failed: {failed}; the fine-tuned model and its PyTorch scores "
                         f"are in {out_dir}") from failed
    return record


def _trainer(cfg: FinetuneConfig, model: PreTrainedModel, tokenizer: Any, train_features: datasets.Dataset,
             staging: Path, task_type: str, deepspeed: dict[str, Any] | None, ds_overrides: dict[str, Any]) -> Trainer:
    args = TrainingArguments(
        output_dir=str(staging / "trainer"), num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.eval_batch_size,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear",
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a value below 1 is a fraction of all steps
        seed=cfg.seed, data_seed=cfg.seed, save_strategy="no", eval_strategy="no",
        logging_steps=cfg.logging_steps, report_to=cfg.report_to, disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(), deepspeed=deepspeed,
        # the features hold model inputs and labels only, and the teacher's outputs, which the collator takes
        remove_unused_columns=not cfg.teacher,
        **{"bf16": cfg.bf16, **ds_overrides},
    )
    if not cfg.teacher:
        return Trainer(model=model, args=args, train_dataset=train_features,
                       data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
    return distill.DistillationTrainer(
        model=model, args=args, train_dataset=train_features, processing_class=tokenizer,
        data_collator=distill.DistillationCollator(tokenizer, distill.teacher_keys(task_type)),
        task_type=task_type, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)


def _save_model(trainer: Trainer, staging: Path, model_dir: Path) -> bool:
    """The fine-tuned model into `staging/model` (collective under ZeRO-3: every rank takes part); whether
    this is the process that writes files."""
    trainer.save_model(str(staging / "model"))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        _finish_model_folder(staging / "model", model_dir)
    return trainer.is_world_process_zero()


def _publish(trainer: Trainer, staging: Path, out_dir: Path, record: dict[str, Any],
             qa_predictions: dict[str, dict[str, str]]) -> None:
    """The saved model, the QA predictions and metrics.json, appearing in `out_dir` in one rename."""
    if trainer.is_world_process_zero():
        for split, answers in qa_predictions.items():
            write_json_atomic(staging / f"predictions_{split}.json", answers)
        write_json_atomic(staging / "metrics.json", record)
        trainer_dir = staging / "trainer"
        if trainer_dir.is_dir() and not any(trainer_dir.iterdir()):
            trainer_dir.rmdir()
        publish_staging(staging, out_dir)
    trainer.accelerator.wait_for_everyone()


def _publish_baseline(cfg: FinetuneConfig) -> dict[str, Any]:
    """The TF-IDF baseline's metrics.json, published like a fine-tuning run's."""
    record = bow_baseline(cfg)
    out_dir = Path(cfg.out_dir)
    staging = open_staging(out_dir)
    write_json_atomic(staging / "metrics.json", record)
    publish_staging(staging, out_dir)
    return record


def _load_tokenizer(cfg: FinetuneConfig, model_dir: Path, trust_model_code: bool):
    source = Path(cfg.tokenizer) if cfg.tokenizer else model_dir
    if not has_vocabulary(source):
        hint = "" if cfg.tokenizer else "; pass --tokenizer <folder>"
        raise FileNotFoundError(f"no tokenizer vocabulary ({' or '.join(VOCAB_FILES)}) in {source}{hint}")
    # AutoTokenizer reads the folder's config too: an atb export's config needs its (trusted) modeling file
    trust = trust_model_code if source == model_dir else cfg.trust_remote_code
    return AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust)


def _load_model(model_dir: Path, task: Task, tokenizer: Any, cfg: FinetuneConfig, trust: bool) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust)
    max_seq_len = cfg.max_seq_len
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                         f"{config.vocab_size}: they do not belong together")
    if max_seq_len > config.max_position_embeddings:
        raise ValueError(f"--max_seq_len {max_seq_len} exceeds the model's {config.max_position_embeddings} positions")
    if task.task_type == "qa":
        return AutoModelForQuestionAnswering.from_pretrained(str(model_dir), trust_remote_code=trust)
    if task.task_type == "regression":
        head: dict[str, Any] = {"num_labels": 1, "problem_type": "regression"}
    else:
        names = task.label_names or []
        head = {"num_labels": len(names), "problem_type": "single_label_classification",
                "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    pooling = declared_pooling(model_dir) if cfg.pooling == "auto" else cfg.pooling
    if config.model_type == "bert" and pooling == "mean":
        # stock BERT's classifier reads [CLS]; the same weights load into TinyBert, whose classifier can read
        # the mean over tokens, and the fine-tuned folder carries its modeling file
        fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures")}
        tiny_config = tinybert_config(**{**fields, **head, "classifier_pooling": "mean"})
        return tiny.TinyBertForSequenceClassification.from_pretrained(str(model_dir), config=tiny_config)
    if config.model_type == tiny.TinyBertConfig.model_type:
        head["classifier_pooling"] = pooling
    elif cfg.pooling == "mean":
        raise ValueError(f"--pooling mean: a {config.model_type!r} classifier reads its own pooled state; atb can "
                         "make bert and atb_tinybert classifiers read the mean over tokens")
    return AutoModelForSequenceClassification.from_pretrained(str(model_dir), trust_remote_code=trust, **head)


def _baseline(task: Task, eval_examples: dict[str, datasets.Dataset]) -> dict[str, Any]:
    num_labels = len(task.label_names or [])
    train_labels = task.splits["train"]["label"]
    result: dict[str, Any] = {}
    for split, examples in eval_examples.items():
        label, scores = classification.majority_baseline(train_labels, examples["label"], num_labels)
        result["label"] = (task.label_names or [])[label]
        result[split] = scores
    return result


def _provenance(model_dir: Path) -> dict[str, Any]:
    path = model_dir / ARCH_JSON
    if not path.is_file():
        return {}
    arch = json.loads(path.read_text())
    return {key: arch[key] for key in ("arch", "arch_name", "format") if key in arch}


def _finish_model_folder(folder: Path, source: Path) -> None:
    (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle; the run's config is in metrics.json
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map") or {}
    if any(MODELING_MODULE in str(ref) for ref in auto_map.values()) and not (folder / MODELING_FILE).is_file():
        shutil.copyfile(tiny.__file__, folder / MODELING_FILE)  # a stock BERT fine-tuned with a TinyBert head
    if (source / ARCH_JSON).is_file():  # read once already, for the run's provenance
        # the source's record less its ONNX files, which hold the source's weights and stay behind
        record = {k: v for k, v in json.loads((source / ARCH_JSON).read_text()).items() if k != "onnx"}
        write_json_atomic(folder / ARCH_JSON, record)


def _deepspeed_setup(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DeepSpeed config for TrainingArguments, and the arguments that must agree with it.

    transformers fills the config's "auto" values from TrainingArguments and rejects any concrete value
    that disagrees with them, so precision and Adam's eps/betas are taken from the config. atb's own
    "torch_adam": "auto" becomes `ds_config.TORCH_ADAM_DEFAULT` (why: there), and ZeRO-3 is
    always told to gather the weights when saving (overriding the config) so that model/ holds a model
    that transformers loads.
    """
    path = ds.resolve_path(name)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {err}") from None
    init_distributed()
    optimizer_params = config.get("optimizer", {}).get("params", {})
    if optimizer_params.get("torch_adam") == "auto":
        optimizer_params["torch_adam"] = ds.TORCH_ADAM_DEFAULT
    if ds.zero_stage(config) == 3:  # else save_model writes a sharded DeepSpeed checkpoint, not a model
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    precision = ds.precision(config)
    overrides: dict[str, Any] = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    if isinstance(optimizer_params.get("eps"), (int, float)):
        overrides["adam_epsilon"] = float(optimizer_params["eps"])
    betas = optimizer_params.get("betas")
    if isinstance(betas, list) and len(betas) == 2 and all(isinstance(b, (int, float)) for b in betas):
        overrides["adam_beta1"], overrides["adam_beta2"] = map(float, betas)
    return config, overrides

"""Scores of a fine-tuned model on its evaluation splits, from whatever computes its outputs: the Trainer (the
model as trained, in PyTorch) or ONNX Runtime (the model as deployed), so that both are scored by one code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import Trainer

from atb.deploy.onnx_export import export_folder, onnx_file
from atb.deploy.ort_predict import Predict, ort_predictor
from atb.deploy.runtime import ORT_INT8
from atb.finetune import classification, qa
from atb.finetune.config import FinetuneConfig
from atb.finetune.tasks import Task


def trainer_predict(trainer: Trainer) -> Predict:
    # transformers groups evaluation batches by length as well, which would reorder predict()'s outputs;
    # the scoring reads them in the dataset's order
    trainer.args.train_sampling_strategy = "random"

    def predict(features: datasets.Dataset) -> tuple[np.ndarray, ...]:
        predictions = trainer.predict(features).predictions
        return predictions if isinstance(predictions, tuple) else (predictions,)

    return predict


def evaluate(predict: Predict, task: Task, eval_examples: dict[str, datasets.Dataset], tokenizer: Any,
             cfg: FinetuneConfig) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Scores per evaluation split, and for QA the predicted answers per split."""
    results, qa_predictions = {}, {}
    for split, examples in eval_examples.items():
        if task.task_type == "qa":
            features = qa.encode_eval(examples, tokenizer, cfg.max_seq_len, cfg.doc_stride)
            start_logits, end_logits = predict(features.remove_columns(["example_id", "offset_mapping"]))[:2]
            answers = qa.predict_answers(examples, features, start_logits, end_logits, cfg.max_answer_len)
            results[split], qa_predictions[split] = qa.score(examples, answers), answers
        else:
            logits = predict(classification.encode(examples, tokenizer, cfg.max_seq_len))[0]
            results[split] = classification.score(task.task_type, logits, np.asarray(examples["label"]),
                                                  len(task.label_names or []))
    return results, qa_predictions


def evaluate_deployed(folder: Path, task: Task, eval_examples: dict[str, datasets.Dataset], tokenizer: Any,
                      cfg: FinetuneConfig) -> dict[str, Any]:
    """Export the fine-tuned `folder` to ONNX for `cfg.deploy` (files written into it) and score it there."""
    export_folder(folder, int8=cfg.deploy == ORT_INT8)
    predict = ort_predictor(onnx_file(folder, cfg.deploy), tokenizer, cfg.eval_batch_size, torch.get_num_threads())
    results, _ = evaluate(predict, task, eval_examples, tokenizer, cfg)
    return {"runtime": cfg.deploy, **results}

"""Sentence and sentence-pair tasks: tokenisation and scoring of classifier / regressor outputs."""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np

from atb.finetune import metrics


def encode(dataset: datasets.Dataset, tokenizer: Any, max_seq_len: int) -> datasets.Dataset:
    """Token ids for `text_a` (and `text_b`), unpadded: the collator pads each batch to its longest row."""
    pair = "text_b" in dataset.column_names

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text_a"], batch["text_b"] if pair else None, truncation=True,
                         max_length=max_seq_len)

    text_columns = [c for c in ("text_a", "text_b") if c in dataset.column_names]
    return dataset.map(tokenize, batched=True, remove_columns=text_columns, desc="tokenizing")


def score(task_type: str, logits: np.ndarray, labels: np.ndarray, num_labels: int) -> dict[str, float]:
    if task_type == "regression":
        return metrics.regression_metrics(labels, np.asarray(logits).reshape(-1))
    return metrics.classification_metrics(labels, np.asarray(logits).argmax(axis=-1), num_labels)


def majority_baseline(train_labels: list[int], eval_labels: list[int], num_labels: int) -> tuple[int, dict[str, float]]:
    """What always predicting the most frequent training class scores: the bar a model must clear."""
    label = metrics.majority_class(train_labels)
    return label, metrics.classification_metrics(eval_labels, [label] * len(eval_labels), num_labels)

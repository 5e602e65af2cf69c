"""The bar a fine-tuned tiny model has to clear: TF-IDF (word 1-2-grams, sublinear tf) + logistic regression,
trained on exactly the rows a fine-tuning run with the same flags trains on and scored on the same dev rows.

    python tools/finetune.py --model tfidf --task movie_sentiment --out_dir runs/ft/tfidf --max_train_samples 3000
"""

from __future__ import annotations

import time
from typing import Any

from atb.cli import config_record
from atb.finetune import classification, metrics
from atb.finetune.config import FinetuneConfig
from atb.finetune.tasks import EVAL_SUBSET_SEED, load_task, subsample

BOW_MODEL = "tfidf"


def _texts(examples) -> list[str]:
    """One document per example; a pair's two sentences joined (their words are features either way)."""
    pairs = "text_b" in examples.column_names
    return [f"{row['text_a']} [SEP] {row['text_b']}" if pairs else row["text_a"] for row in examples]


def bow_baseline(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fit on the (sub-sampled) train rows, score dev/test; returns the record `finetune` would write."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    task = load_task(cfg)
    if task.task_type != "classification":
        raise ValueError(f"--model {BOW_MODEL} is a classification baseline; task {task.name} is {task.task_type}")
    train = subsample(task.splits["train"], cfg.max_train_samples, cfg.seed)
    evals = {s: subsample(d, cfg.max_eval_samples, EVAL_SUBSET_SEED) for s, d in task.splits.items() if s != "train"}
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform(_texts(train))
    model = LogisticRegression(C=10.0, max_iter=2000).fit(features, train["label"])
    num_labels = len(task.label_names or [])
    scores = {split: metrics.classification_metrics(
        examples["label"], model.predict(vectorizer.transform(_texts(examples))).tolist(),
        num_labels) for split, examples in evals.items()}
    majority: dict[str, Any] = {}
    for split, examples in evals.items():
        label, majority[split] = classification.majority_baseline(task.splits["train"]["label"], examples["label"],
                                                                  num_labels)
        majority["label"] = (task.label_names or [])[label]
    return {"task": task.name, "task_type": task.task_type, "model": BOW_MODEL,
            "sizes": {"train": len(task.splits["train"]), "train_used": len(train),
                      **{f"{s}_used": len(d) for s, d in evals.items()}},
            **scores, "majority_baseline": majority,
            "train": {"time_s": round(time.perf_counter() - started, 2)}, **config_record(cfg)}

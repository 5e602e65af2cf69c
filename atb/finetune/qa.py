"""Extractive QA in the SQuAD v1.1 way: windows over long contexts, token labels from character offsets,
and predicted token spans mapped back to the exact characters of the original context.

A context longer than the model's window is cut into overlapping windows ("features"); one example can
therefore have several features, and its answer is the best-scoring span over all of them. The offset
mapping of a fast tokenizer ties every context token to its characters, which is what turns the answer's
character span into start/end token labels for training and a predicted token span back into text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from atb.finetune import metrics
from atb.finetune.tasks import NO_LABEL

MAX_QUESTION_TOKENS = 64  # as in BERT's run_squad: longer questions are cut, the context keeps its room
Offsets = Sequence[Sequence[int] | None]


def check_window(max_seq_len: int, doc_stride: int) -> None:
    room = max_seq_len - _question_budget(max_seq_len) - 3  # [CLS] q [SEP] context [SEP]
    if max_seq_len < 16 or not 0 <= doc_stride < room:
        raise ValueError(f"QA needs max_seq_len >= 16 and 0 <= doc_stride < {room} (the context room of a "
                         f"{max_seq_len}-token window); got max_seq_len {max_seq_len}, doc_stride {doc_stride}")


def encode_train(examples: datasets.Dataset, tokenizer: Any, max_seq_len: int, doc_stride: int) -> datasets.Dataset:
    """Features with start/end token labels; a window that does not contain the answer points at [CLS], and a
    question without answers (an --unlabelled_file's) gets NO_LABEL for both."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = _windows(batch, tokenizer, max_seq_len, doc_stride)
        sample_of = enc.pop("overflow_to_sample_mapping")
        starts, ends = [], []
        for i, offsets in enumerate(enc.pop("offset_mapping")):
            answers = batch["answers"][sample_of[i]]
            if not answers["text"]:
                starts.append(NO_LABEL["qa"])
                ends.append(NO_LABEL["qa"])
                continue
            start_char = answers["answer_start"][0]
            span = token_span(offsets, enc.sequence_ids(i), start_char, start_char + len(answers["text"][0]))
            starts.append(span[0])
            ends.append(span[1])
        enc["start_positions"] = starts
        enc["end_positions"] = ends
        return enc

    return examples.map(encode, batched=True, remove_columns=examples.column_names, desc="QA train features")


def encode_eval(examples: datasets.Dataset, tokenizer: Any, max_seq_len: int, doc_stride: int) -> datasets.Dataset:
    """Features that remember their example and the character offsets of their context tokens only."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        enc = _windows(batch, tokenizer, max_seq_len, doc_stride)
        sample_of = enc.pop("overflow_to_sample_mapping")
        enc["example_id"] = [batch["id"][s] for s in sample_of]
        enc["offset_mapping"] = [
            [list(o) if seq == 1 else None for o, seq in zip(offsets, enc.sequence_ids(i))]
            for i, offsets in enumerate(enc["offset_mapping"])
        ]
        return enc

    return examples.map(encode, batched=True, remove_columns=examples.column_names, desc="QA eval features")


def token_span(offsets: Offsets, sequence_ids: Sequence[int | None], start_char: int, end_char: int) -> tuple[int, int]:
    """Token indices of the first and last context tokens covering [start_char, end_char), or (0, 0)
    — the [CLS] position — when this window does not contain the whole answer."""
    context = [k for k, seq in enumerate(sequence_ids) if seq == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = max(k for k in context if offsets[k][0] <= start_char)
    end = min(k for k in context if offsets[k][1] >= end_char)
    return start, end


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: Offsets,
              max_answer_len: int) -> tuple[float, int, int] | None:
    """(score, start_char, end_char) of the highest start+end logit span with both ends in the context,
    end >= start and at most `max_answer_len` tokens; None when the window has no context token.

    `offsets` has one entry per real token (None outside the context); logits may be longer (batch
    padding) and are cut to it.
    """
    n = len(offsets)
    in_context = np.array([o is not None for o in offsets], dtype=bool)
    if not in_context.any():
        return None
    start = np.asarray(start_logits[:n], dtype=np.float64)
    end = np.asarray(end_logits[:n], dtype=np.float64)
    i, j = np.ogrid[:n, :n]
    allowed = (j >= i) & (j - i < max_answer_len) & in_context[:, None] & in_context[None, :]
    scores = np.where(allowed, start[:, None] + end[None, :], -np.inf)
    s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[s, e]), int(offsets[s][0]), int(offsets[e][1])  # type: ignore[index]


def predict_answers(examples: datasets.Dataset, features: datasets.Dataset, start_logits: np.ndarray,
                    end_logits: np.ndarray, max_answer_len: int) -> dict[str, str]:
    """The answer text of every example: its best span over all of its features, cut from its context."""
    best: dict[str, tuple[float, int, int]] = {}
    for f, (example_id, offsets) in enumerate(zip(features["example_id"], features["offset_mapping"])):
        span = best_span(start_logits[f], end_logits[f], offsets, max_answer_len)
        if span is not None and (example_id not in best or span[0] > best[example_id][0]):
            best[example_id] = span
    answers = {}
    for example_id, context in zip(examples["id"], examples["context"]):
        span = best.get(example_id)
        answers[example_id] = context[span[1]:span[2]] if span else ""
    return answers


def score(examples: datasets.Dataset, predictions: dict[str, str]) -> dict[str, float]:
    gold = {qid: answers["text"] for qid, answers in zip(examples["id"], examples["answers"])}
    return metrics.squad_metrics(predictions, gold)


def _question_budget(max_seq_len: int) -> int:
    return min(MAX_QUESTION_TOKENS, max_seq_len // 2)


def _windows(batch: dict[str, list], tokenizer: Any, max_seq_len: int, doc_stride: int):
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("QA needs a fast (Rust `tokenizers`) tokenizer for its character offsets; "
                         "give a folder with tokenizer.json")
    budget = _question_budget(max_seq_len)
    questions = [_cut_question(q.lstrip(), tokenizer, budget) for q in batch["question"]]
    return tokenizer(questions, batch["context"], truncation="only_second", max_length=max_seq_len,
                     stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)


def _cut_question(question: str, tokenizer: Any, budget: int) -> str:
    offsets = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return question if len(offsets) <= budget else question[:offsets[budget - 1][1]]

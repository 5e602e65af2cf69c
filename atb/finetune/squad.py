"""SQuAD v1.1 JSON, read into one row per question (the layout of the Hugging Face `squad` dataset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets

from atb.finetune import files

# one row per question, as the Hugging Face `squad` dataset lays it out; an unlabelled row's answers are empty
SQUAD_FEATURES = datasets.Features({
    "id": datasets.Value("string"), "title": datasets.Value("string"), "question": datasets.Value("string"),
    "context": datasets.Value("string"),
    "answers": {"text": datasets.List(datasets.Value("string")),
                "answer_start": datasets.List(datasets.Value("int64"))}})


def read_squad(path: Path, check_spans: bool, labelled: bool = True) -> dict[str, list[Any]]:
    """Flatten SQuAD v1.1 JSON (data → paragraphs → qas) into one row per question.

    `check_spans` (for training data) insists that every answer's text sits at its answer_start in the
    context, since a misplaced span would silently teach the model the wrong tokens. Without `labelled`
    (an --unlabelled_file: questions and contexts a teacher answers) any answers are left out unread.
    """
    data = files.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{path} is not SQuAD v1.1 JSON: expected an object with a 'data' list")
    out: dict[str, list[Any]] = {"id": [], "title": [], "question": [], "context": [], "answers": []}
    seen: set[str] = set()
    for article in data["data"]:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise ValueError(f"{path}: a paragraph of '{article.get('title', '?')}' has no context string")
            for qa in paragraph.get("qas", []):
                qid = str(qa.get("id", ""))
                where = f"{path.name}, question id {qid!r}"
                if not qid or qid in seen:
                    raise ValueError(f"{where}: every question needs a unique id")
                seen.add(qid)
                texts, starts = _answers(qa, context, where, check_spans) if labelled else ([], [])
                out["id"].append(qid)
                out["title"].append(str(article.get("title", "")))
                out["question"].append(str(qa.get("question", "")))
                out["context"].append(context)
                out["answers"].append({"text": texts, "answer_start": starts})
    return out


def _answers(qa: dict[str, Any], context: str, where: str, check_spans: bool) -> tuple[list[str], list[int]]:
    """A question's answer texts and their starts, refused when SQuAD v1.1 would not hold them."""
    if qa.get("is_impossible"):
        raise ValueError(f"{where} is unanswerable (SQuAD v2); only SQuAD v1.1 is supported")
    answers = qa.get("answers") or []
    if not answers:
        raise ValueError(f"{where} has no answers; SQuAD v1.1 questions need at least one")
    texts, starts = [], []
    for answer in answers:
        text, start = answer.get("text"), answer.get("answer_start")
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            raise ValueError(f"{where}: an answer needs 'text' (string) and 'answer_start' (int)")
        if check_spans and context[start:start + len(text)] != text:
            raise ValueError(f"{where}: answer {text!r} is not at answer_start {start} of its "
                             f"context (found {context[start:start + len(text)]!r})")
        texts.append(text)
        starts.append(start)
    return texts, starts

"""A task's files → `datasets.Dataset` splits with uniform columns, or a clear error naming the problem.

Text tasks (classification, regression) become columns `text_a`, optional `text_b` and `label`; QA tasks
(SQuAD v1.1 JSON) become `id`, `question`, `context`, `answers` ({"text": [...], "answer_start": [...]}),
the layout of the Hugging Face `squad` dataset. Auto-detection follows GLUE's conventions so its files
load without flags: the known text-column pairs, a `label`-like column, and regression when the labels
are numbers that are not all integers (STS-B's scores).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from atb.finetune import files
from atb.finetune.config import FinetuneConfig
from atb.finetune.squad import SQUAD_FEATURES, read_squad
from atb.fsutil import write_text_atomic

TEXT_COLUMN_CANDIDATES = (
    ("sentence1", "sentence2"), ("#1 String", "#2 String"), ("question1", "question2"),
    ("question", "sentence"), ("premise", "hypothesis"), ("sentence",), ("text",),
)
LABEL_COLUMN_CANDIDATES = ("label", "gold_label", "Quality", "score")
# the label of an unlabelled row (--unlabelled_file): cross-entropy's usual ignore index (a QA row's start and
# end positions), or not a number
NO_LABEL = {"classification": -100, "regression": math.nan, "qa": -100}


@dataclass
class Task:
    name: str
    task_type: str  # classification | regression | qa
    splits: dict[str, datasets.Dataset]  # train, dev, test when labelled, unlabelled when given
    files: dict[str, Path]
    text_columns: list[str] = field(default_factory=list)
    label_column: str | None = None
    label_names: list[str] | None = None  # classification: id -> original label string
    notes: list[str] = field(default_factory=list)  # what was skipped and why (goes into metrics.json)


def load_task(cfg: FinetuneConfig) -> Task:
    folder = files.task_dir(cfg.task) if cfg.task else None
    paths = _split_paths(cfg, folder)
    name = Path(cfg.task).name if cfg.task else paths["train"].parent.name
    is_squad = files.file_format(paths["train"]) == "json"
    if cfg.unlabelled_file:
        paths["unlabelled"] = Path(cfg.unlabelled_file).expanduser()
    if cfg.task_type == "qa" or (cfg.task_type == "auto" and is_squad):
        return _load_qa(cfg, name, paths)
    if is_squad:
        raise ValueError(f"{paths['train']} is JSON, which atb reads as SQuAD; --task_type {cfg.task_type} "
                         "needs TSV, CSV or JSONL files")
    return _load_text(cfg, name, paths)


EVAL_SUBSET_SEED = 0  # fixed: every model is scored on the same dev/test rows


def subsample(dataset: datasets.Dataset, limit: int | None, seed: int | None) -> datasets.Dataset:
    """At most `limit` rows: a seeded random subset (seed given) or the first rows (seed None)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if seed is not None:
        dataset = dataset.shuffle(seed=seed)
    return dataset.select(range(limit))


def write_jsonl(task: Task, rows: datasets.Dataset, path: Path, labels: bool = True) -> Path:
    """Rows of a text task's split as JSONL under the task's own column names (labels by their names), for
    example as an `--unlabelled_file` (labels=False) or a fixed training subset; written atomically."""
    names = dict(zip(("text_a", "text_b"), task.text_columns))
    label = task.label_column or "label"

    def record(row: dict[str, Any]) -> dict[str, Any]:
        out = {names[k]: row[k] for k in names}
        if labels:
            out[label] = task.label_names[row["label"]] if task.label_names else row["label"]
        return out

    write_text_atomic(path, "".join(json.dumps(record(row)) + "\n" for row in rows))
    return path


def _split_paths(cfg: FinetuneConfig, folder: Path | None) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for split in ("train", "dev", "test") if cfg.eval_test else ("train", "dev"):
        explicit = getattr(cfg, f"{split}_file")
        if explicit:
            path = Path(explicit).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--{split}_file {path} not found")
            paths[split] = path
            continue
        found = files.find_split(folder, split) if folder is not None else None
        if found is not None:
            paths[split] = found
        elif split != "test":
            where = f"in {folder}" if folder is not None else "(no --task folder given)"
            raise FileNotFoundError(f"no {split} file {where}: expected one of "
                                    f"{', '.join(s + '.<tsv|csv|jsonl|json>' for s in files.SPLIT_STEMS[split])} "
                                    f"or --{split}_file")
    return paths


# --- classification / regression ---------------------------------------------------------------------

def _load_text(cfg: FinetuneConfig, name: str, paths: dict[str, Path]) -> Task:
    records = {split: _read_records(cfg, path) for split, path in paths.items()}
    train = records["train"]
    _require_rows(train, "train")
    text_columns = list(cfg.text_columns) if cfg.text_columns else _detect(train, TEXT_COLUMN_CANDIDATES,
                                                                           "--text_columns")
    label_column = cfg.label_column or _detect(train, [(c,) for c in LABEL_COLUMN_CANDIDATES], "--label_column")[0]
    files.require_columns(train, [*text_columns, label_column], "--text_columns / --label_column")
    task = Task(name, "", {}, dict(paths), text_columns, label_column)
    if "unlabelled" in records:
        files.require_columns(records["unlabelled"], text_columns, "--unlabelled_file (the train file's text columns)")
        _require_rows(records["unlabelled"], "unlabelled")
    for split in ("dev", "test"):
        if split not in records:
            continue
        if split == "test" and label_column not in records[split].columns:
            task.notes.append(f"test split {paths['test'].name} has no '{label_column}' column: not evaluated")
            del records[split], task.files[split]
            continue
        files.require_columns(records[split], [*text_columns, label_column], "--text_columns / --label_column")
        _require_rows(records[split], split)

    raw_labels = {split: _column(rec, label_column) for split, rec in records.items() if split != "unlabelled"}
    task.task_type = cfg.task_type if cfg.task_type != "auto" else _detect_text_task_type(raw_labels["train"])
    if task.task_type == "regression":
        labels: dict[str, list[Any]] = {s: _as_floats(records[s], raw) for s, raw in raw_labels.items()}
    else:
        task.label_names = _label_names(raw_labels["train"])
        index = {label: i for i, label in enumerate(task.label_names)}
        labels = {s: _as_ids(records[s], raw, index) for s, raw in raw_labels.items()}
    if "unlabelled" in records:
        labels["unlabelled"] = [NO_LABEL[task.task_type]] * len(_column(records["unlabelled"], text_columns[0]))
    for split, rec in records.items():
        columns = {"text_a": _column(rec, text_columns[0], text=True)}
        if len(text_columns) == 2:
            columns["text_b"] = _column(rec, text_columns[1], text=True)
        columns["label"] = labels[split]
        task.splits[split] = datasets.Dataset.from_dict(columns)
    return task


def _read_records(cfg: FinetuneConfig, path: Path) -> files.Records:
    fmt = files.file_format(path)
    if fmt == "jsonl":
        return files.read_jsonl(path)
    if fmt == "json":
        raise ValueError(f"{path} is JSON (SQuAD); the train file of this task is not, so they cannot go together")
    known = {c for cands in TEXT_COLUMN_CANDIDATES for c in cands} | set(LABEL_COLUMN_CANDIDATES)
    known |= set(cfg.text_columns or []) | set(cfg.columns or []) | ({cfg.label_column} if cfg.label_column else set())

    def looks_like_header(row: list[str]) -> bool:
        return any(cell.strip() in known for cell in row)

    def headerless_columns(width: int) -> list[str]:
        if cfg.columns:
            return list(cfg.columns)
        label = cfg.label_column or "label"
        if cfg.text_columns:
            text = list(cfg.text_columns)
        else:  # SST-2 (sentence, label) or a pair (sentence1, sentence2, label)
            text = ["sentence"] if width == 2 else ["sentence1", "sentence2"]
        if width != len(text) + 1:
            raise ValueError(f"{path} has no header and {width} columns; name them with --columns "
                             f"(e.g. --columns sentence,label) or add a header row")
        return [*text, label]

    return files.read_delimited(path, looks_like_header, cfg.has_header, headerless_columns)


def _detect(records: files.Records, candidates, flag: str) -> list[str]:
    for names in candidates:
        if all(n in records.columns for n in names):
            return list(names)
    raise ValueError(f"cannot tell which columns of {records.path} to use (columns: {records.columns}); "
                     f"set {flag}")


def _require_rows(records: files.Records, split: str) -> None:
    if not records.rows:
        raise ValueError(f"{split} split {records.path} has no examples")


def _column(records: files.Records, name: str, text: bool = False) -> list[Any]:
    values = []
    for i, row in enumerate(records.rows):
        if name not in row or row[name] is None:
            raise ValueError(f"{records.where(i)} has no value for column '{name}'")
        value = row[name]
        if text and not isinstance(value, str):
            raise ValueError(f"{records.where(i)}: column '{name}' should be text, got {value!r}")
        values.append(value)
    return values


def _label_key(value: Any) -> str:
    """Labels compare as strings, so '1' in a TSV and 1 in a JSONL file are the same class."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _detect_text_task_type(train_labels: list[Any]) -> str:
    numbers = [_number(v) for v in train_labels]
    if all(n is not None for n in numbers) and any(not n.is_integer() for n in numbers):  # type: ignore[union-attr]
        return "regression"
    return "classification"


def _label_names(train_labels: list[Any]) -> list[str]:
    keys = sorted({_label_key(v) for v in train_labels})
    if all(_number(k) is not None for k in keys):  # numeric classes in numeric order: '2' before '10'
        keys.sort(key=float)
    if len(keys) < 2:
        raise ValueError(f"the training labels take a single value {keys}; classification needs at least two")
    return keys


def _as_ids(records: files.Records, raw: list[Any], index: dict[str, int]) -> list[int]:
    ids = []
    for i, value in enumerate(raw):
        key = _label_key(value)
        if key not in index:
            raise ValueError(f"{records.where(i)}: label {key!r} does not occur in the training data "
                             f"(training labels: {list(index)})")
        ids.append(index[key])
    return ids


def _as_floats(records: files.Records, raw: list[Any]) -> list[float]:
    out = []
    for i, value in enumerate(raw):
        number = _number(value)
        if number is None:
            raise ValueError(f"{records.where(i)}: regression label {value!r} is not a finite number")
        out.append(number)
    return out


# --- SQuAD v1.1 ------------------------------------------------------------------------------------------

def _load_qa(cfg: FinetuneConfig, name: str, paths: dict[str, Path]) -> Task:
    if cfg.text_columns or cfg.label_column or cfg.columns:
        raise ValueError("QA tasks are read from SQuAD v1.1 JSON; --text_columns, --label_column and "
                         "--columns do not apply")
    task = Task(name, "qa", {}, dict(paths), ["question", "context"])
    for split, path in paths.items():
        if files.file_format(path) != "json":
            what = "--unlabelled_file" if split == "unlabelled" else f"QA {split} file"
            raise ValueError(f"{what} {path} must be SQuAD v1.1 JSON (.json) for a QA task")
        examples = read_squad(path, check_spans=split == "train", labelled=split != "unlabelled")
        if not examples["id"]:
            raise ValueError(f"{split} split {path} has no questions")
        task.splits[split] = datasets.Dataset.from_dict(examples, features=SQUAD_FEATURES)
    return task

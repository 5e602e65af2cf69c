"""Finding and reading a task's files: GLUE-style TSV, CSV, JSON Lines (optionally gzip-compressed) and
SQuAD JSON, plus the tasks shipped with atb.

TSV is read the way GLUE is: tab-separated with quoting off (csv.QUOTE_NONE), because sentences contain
bare `"` characters that a quoting reader would treat as field delimiters and silently merge lines.
Every record keeps its line number so that a bad value can be reported where the user can find it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

BUILTIN_TASKS = ("movie_sentiment", "sms_spam")
SPLIT_STEMS = {
    "train": ("train", "train-v1.1"),
    "dev": ("dev", "validation", "dev_matched", "dev-v1.1"),
    "test": ("test", "test_matched"),
}
FORMATS = ("tsv", "csv", "jsonl", "json")


@dataclass
class Records:
    """One split file as rows of named fields, with the source line of each row."""

    path: Path
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def where(self, index: int) -> str:
        return f"{self.path.name} line {self.lines[index]}"


def file_format(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format of {path}: expected a name ending in "
                         f"{', '.join('.' + f for f in FORMATS)} (optionally .gz)")
    return suffix


@contextmanager
def open_text(path: Path) -> Iterator[io.TextIOBase]:
    """The file as UTF-8 text; bytes that are not UTF-8 give one error naming the file and line."""
    fh = io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="") if path.name.endswith(".gz") \
        else open(path, encoding="utf-8", newline="")
    try:
        with fh:
            yield fh
    except UnicodeDecodeError:
        raise ValueError(f"{path} line {_first_undecodable_line(path)} is not UTF-8 text; re-save the file as "
                         "UTF-8") from None


def _first_undecodable_line(path: Path) -> int:
    data = gzip.open(path, "rb").read() if path.name.endswith(".gz") else path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return data.count(b"\n", 0, err.start) + 1
    return 0


def task_dir(task: str) -> Path:
    """A folder of split files: the path given, or the folder of a built-in task."""
    path = Path(task).expanduser()
    if path.is_dir():
        return path
    if task in BUILTIN_TASKS:
        return Path(str(resources.files("atb") / "resources" / "tasks" / task))
    raise FileNotFoundError(f"task {task!r} is neither a folder nor a built-in task ({', '.join(BUILTIN_TASKS)})")


def find_split(folder: Path, split: str) -> Path | None:
    """The one file of `split` in `folder` (train.tsv, dev.jsonl, validation.csv.gz, dev-v1.1.json, ...)."""
    stems = SPLIT_STEMS[split]
    found = []
    for path in sorted(folder.iterdir()):
        name = path.name.removesuffix(".gz")
        stem, _, suffix = name.rpartition(".")
        if path.is_file() and stem in stems and suffix.lower() in FORMATS:
            found.append(path)
    if len(found) > 1:
        raise ValueError(f"several {split} files in {folder}: {[p.name for p in found]}; "
                         f"choose one with --{split}_file")
    return found[0] if found else None


def read_delimited(path: Path, looks_like_header: Callable[[list[str]], bool], has_header: bool | None,
                   headerless_columns: Callable[[int], list[str]]) -> Records:
    """A TSV/CSV file as Records. Without a header, column names come from `headerless_columns(width)`."""
    fmt = file_format(path)
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if fmt == "tsv" else csv.reader(fh)
        raw: list[tuple[int, list[str]]] = []
        start = 1
        for row in reader:
            if row and any(cell.strip() for cell in row):
                raw.append((start, row))
            start = reader.line_num + 1
    if not raw:
        return Records(path, [])
    header_present = looks_like_header(raw[0][1]) if has_header is None else has_header
    if header_present:
        columns = [c.strip() for c in raw[0][1]]
        raw = raw[1:]
    else:
        columns = headerless_columns(len(raw[0][1]))
    records = Records(path, columns)
    for line, row in raw:
        if len(row) != len(columns):
            hint = " (a tab inside a text field?)" if fmt == "tsv" else ""
            raise ValueError(f"{path.name} line {line} has {len(row)} fields but the file has {len(columns)} "
                             f"columns {columns}{hint}")
        records.rows.append(dict(zip(columns, row)))
        records.lines.append(line)
    return records


def read_jsonl(path: Path) -> Records:
    records = Records(path, [])
    seen: dict[str, None] = {}
    with open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path.name} line {line_no} is not valid JSON: {err}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path.name} line {line_no}: expected a JSON object, got {type(row).__name__}")
            seen.update(dict.fromkeys(row))
            records.rows.append(row)
            records.lines.append(line_no)
    records.columns = list(seen)
    return records


def read_json(path: Path) -> Any:
    with open_text(path) as fh:
        try:
            return json.load(fh)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None


def require_columns(records: Records, needed: Iterable[str], flag: str) -> None:
    missing = [c for c in needed if c not in records.columns]
    if missing:
        raise ValueError(f"{records.path} has no column {', '.join(map(repr, missing))} "
                         f"(its columns: {records.columns}); set {flag}")

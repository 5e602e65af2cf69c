"""Pre-training text: local files or folders (one paragraph per line, `.gz` allowed), a saved `datasets`
dataset, or the built-in demo corpus. Real users bring their own corpus; nothing here assumes ours.

Text files go through `load_dataset("text")` rather than being read into memory: the result is
memory-mapped Arrow, and its fingerprint follows the files (path, size, modification time), so the
token and block caches downstream are invalidated when a file is edited.
"""

from __future__ import annotations

import codecs
import gzip
from importlib import resources
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

TEXT_SUFFIXES = (".txt", ".txt.gz", ".text", ".text.gz")
DEMO = "demo"


def demo_corpus_files() -> list[str]:
    """The shipped demo corpus (Jane Austen + a Wikipedia sample; see resources/corpus/README.md)."""
    folder = resources.files("atb") / "resources" / "corpus"
    files = sorted(str(p) for p in folder.iterdir() if p.name.endswith(TEXT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"the demo corpus is missing from the installed package ({folder})")
    return files


def load_corpus(source: str | list[str]) -> Dataset:
    """A Dataset with one non-blank paragraph per row in column "text".

    `source` is a path or a list of paths: text files, folders (every text file inside, recursively, in
    sorted order, hidden ones skipped), or ONE folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (its
    "train" split). "demo" stands for the shipped demo corpus.
    """
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise ValueError("no corpus given")
    expanded: list[str] = []
    for item in sources:
        expanded += demo_corpus_files() if str(item) == DEMO else [str(item)]
    for item in expanded:
        if not Path(item).exists():
            raise FileNotFoundError(f"corpus {item} not found")

    saved = [item for item in expanded if _is_saved_dataset(Path(item))]
    if saved:
        if len(expanded) != 1:
            raise ValueError(f"the saved datasets folder {saved[0]} cannot be mixed with other corpus sources")
        return _clean(_load_saved(Path(saved[0])), saved[0])

    files = [f for item in expanded for f in _text_files(Path(item))]
    _check_text(files)
    data = load_dataset("text", data_files=files, split="train")
    return _clean(data, ", ".join(sources))


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def _load_saved(path: Path) -> Dataset:
    saved = load_from_disk(str(path))
    if isinstance(saved, DatasetDict):
        if "train" not in saved:
            raise ValueError(f"saved dataset {path} has no 'train' split (splits: {list(saved)})")
        saved = saved["train"]
    if "text" not in saved.column_names:
        raise ValueError(f"saved dataset {path} has no 'text' column (columns: {saved.column_names})")
    return saved.select_columns(["text"])


def _text_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES)
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))  # editor/VCS debris
    if not files:
        raise FileNotFoundError(f"corpus folder {path} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    return files


def _check_text(files: list[str]) -> None:
    """Corpus files that are all empty, or not UTF-8 text, fail here with their name, not deep in datasets."""
    if all(Path(f).stat().st_size == 0 for f in files):
        raise ValueError(f"corpus {', '.join(files[:3])} is empty (0 bytes); give text, one paragraph per line")
    for f in files:
        with (gzip.open(f, "rb") if f.endswith(".gz") else open(f, "rb")) as fh:
            head = fh.read(1 << 16)
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError as err:
            raise ValueError(f"corpus file {f} is not UTF-8 text (byte {err.start} of it); give plain text files, "
                             "one paragraph per line") from None
        if b"\0" in head:
            raise ValueError(f"corpus file {f} holds NUL bytes: it is binary, not text; give plain text files")


def _keep_nonblank(batch: dict[str, list]) -> list[bool]:
    return [bool(text and text.strip()) for text in batch["text"]]


def _clean(data: Dataset, origin: str) -> Dataset:
    data = data.filter(_keep_nonblank, batched=True, desc="drop blank lines")
    if len(data) == 0:
        raise ValueError(f"corpus {origin} is empty (no non-blank lines)")
    return data

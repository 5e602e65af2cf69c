"""`importance.json` (scores and orders, tied to the source folder and space they were computed for) and the
importance-ordered copy of the source folder that a SuperPLM and its teacher start from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from atb.fsutil import atomic_dir, file_sha256, write_json_atomic
from atb.model.bert_source import CONVERTED_FROM, SourceDims, load_state, read_config
from atb.model.importance import Importance
from atb.model.permute import ModelOrder, permute_state_dict

IMPORTANCE_FILE = "importance.json"
ORDER_RECORD = "atb_order.json"
FORMAT = 1
# what transformers needs to load the copy; files of other libraries (sentence-transformers' pooling) would
# describe the unpermuted model
KEPT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
              "atb_arch.json")


def write_importance(path: str | Path, importance: Importance, order: ModelOrder, source: str | Path,
                     source_hash: str, space: dict[str, Any], calibration: dict[str, Any]) -> None:
    write_json_atomic(path, {
        "format": FORMAT, "source": str(Path(source).resolve()), "source_hash": source_hash, "space": space,
        "estimator": importance.estimator, "samples": importance.samples, "calibration": calibration,
        "scores": importance.to_dict(), "order": order.to_dict(),
    })


def read_importance(path: str | Path, source_hash: str, space: dict[str, Any], estimator: str,
                    dims: SourceDims) -> tuple[Importance, ModelOrder]:
    """The file's scores and orders, if they were computed for this source, space and estimator."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        importance, order = Importance.from_dict(data["scores"]), ModelOrder.from_dict(data["order"], dims)
        recorded_hash, recorded_space, recorded_estimator = data["source_hash"], data["space"], data["estimator"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable importance file ({type(err).__name__}: {err}); "
                         "delete it to recompute") from None
    fix = f"delete {path} to recompute, or pass another --importance_file"
    if recorded_hash != source_hash:
        raise ValueError(f"{path} is stale: computed for another source ({data.get('source')}, content hash "
                         f"{recorded_hash[:12]}), not this one ({source_hash[:12]}); {fix}")
    if recorded_space != space:
        raise ValueError(f"{path} is stale: computed for space {recorded_space.get('name')!r} "
                         f"({recorded_space}), this run's is {space}; {fix}")
    if recorded_estimator != estimator:
        raise ValueError(f"{path} holds {recorded_estimator!r} importance, this run asks for {estimator!r}; {fix}")
    return importance, order


def write_ordered_folder(source: str | Path, order: ModelOrder, dest: str | Path, importance_file: str | Path) -> Path:
    """A copy of `source` (config, tokenizer, modeling files) with its weights permuted by `order`.

    An existing copy made from the same importance file is kept; any other is replaced (it is atb's own
    derived output, never user data).
    """
    dest, importance_file = Path(dest), Path(importance_file)
    record = {"source": str(Path(source).resolve()), "importance_file": str(importance_file.resolve()),
              "importance_sha256": file_sha256(importance_file)}
    existing = dest / ORDER_RECORD
    if existing.is_file() and json.loads(existing.read_text()) == record:
        return dest
    state = permute_state_dict(load_state(source, normalise=False), order)
    config = read_config(source)
    with atomic_dir(dest, overwrite=True) as tmp:
        for item in Path(source).iterdir():
            if item.is_file() and (item.name in KEPT_FILES or item.suffix == ".py"):  # .py: an atb export's modeling file
                shutil.copy2(item, tmp / item.name)
        if config.pop(CONVERTED_FROM, None):  # the copy holds BERT's names and positions: it is a BERT folder
            write_json_atomic(tmp / "config.json", {**config, "architectures": ["BertForMaskedLM"]})
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / ORDER_RECORD).write_text(json.dumps(record, indent=1))
    return dest


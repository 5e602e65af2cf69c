"""The SuperPLM folder: the consolidated fp32 supernet that search, extraction and development read.

Layout: `supernet.json` (SuperBert config + provenance such as the training step) and
`model.safetensors`. Pre-training writes DeepSpeed checkpoints; `atb.train.consolidate` turns any of
them into this folder (`load_supernet_or_checkpoint` there reads either).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from atb.fsutil import atomic_dir, read_json, require_path, write_json_atomic
from atb.model.elastic import SuperBert, SuperBertConfig

SUPERNET_JSON = "supernet.json"
WEIGHTS = "model.safetensors"
# The MLM decoder shares these Parameters with the word embeddings; safetensors stores each tensor once.
TIED_ALIASES = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def untied_state_dict(model: SuperBert) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    return {k: v.detach().contiguous() for k, v in sd.items() if k not in TIED_ALIASES}


def load_weights_into(model: SuperBert, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load with a message that says which tensors are missing, unexpected or mis-shaped."""
    state = {k: v for k, v in state.items() if k not in TIED_ALIASES}
    expected = untied_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise ValueError(
            f"weights in {origin} do not match the SuperBert config: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}, shape mismatches {wrong[:5]}")
    model.load_state_dict({**state, **{a: state[t] for a, t in TIED_ALIASES.items()}}, strict=True)


def save_supernet(model: SuperBert, folder: str | Path, meta: dict[str, Any] | None = None,
                  overwrite: bool = False) -> Path:
    folder = Path(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        save_file({k: v.float().cpu() for k, v in untied_state_dict(model).items()}, str(tmp / WEIGHTS))
        write_json_atomic(tmp / SUPERNET_JSON, {"config": model.config.to_dict(), "meta": meta or {}})
    return folder


def is_supernet_folder(path: Path) -> bool:
    return (path / SUPERNET_JSON).is_file()


def load_supernet(path: str | Path) -> tuple[SuperBert, dict[str, Any]]:
    """(model, meta) of a SuperPLM folder."""
    path = require_path(path, "SuperPLM checkpoint")
    if not is_supernet_folder(path):
        raise FileNotFoundError(f"{path} is not a SuperPLM folder (no {SUPERNET_JSON})")
    info = read_json(path / SUPERNET_JSON, "SuperPLM config")
    if not isinstance(info, dict) or "config" not in info:
        raise ValueError(f"{path / SUPERNET_JSON} has no 'config' entry; it is not a SuperPLM folder")
    model = SuperBert(SuperBertConfig.from_dict(info["config"]))
    weights = path / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"SuperPLM weights not found: {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"SuperPLM weights {weights} are corrupt or truncated: {err}") from None
    load_weights_into(model, state, str(weights))
    return model, dict(info.get("meta", {}))

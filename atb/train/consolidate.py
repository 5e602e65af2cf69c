"""Any ZeRO stage's checkpoint → fp32 SuperBert, through DeepSpeed's zero_to_fp32 utilities.

Search, extraction and development read SuperPLM weights; they should not care which ZeRO stage or how
many ranks produced them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from atb.model.elastic import SuperBert, SuperBertConfig
from atb.model.supernet_io import is_supernet_folder, load_supernet, load_weights_into
from atb.train.checkpointing import COMPLETE, LATEST, CheckpointError, read_latest, validate
from atb.train.trusted_load import trusted_checkpoint

SUPERNET_PREFIX = "supernet."


def resolve(path: Path) -> tuple[Path, str]:
    """(checkpoint root, tag) from either the root (follows `latest`) or a tag folder."""
    if (path / LATEST).is_file():
        return path, read_latest(path)
    if (path / COMPLETE).is_file():
        return path.parent, path.name
    raise CheckpointError(f"{path} is neither a SuperPLM folder nor an atb DeepSpeed checkpoint "
                          f"(no supernet.json, '{LATEST}' or {COMPLETE})")


def load_supernet_or_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> tuple[SuperBert, dict[str, Any]]:
    """A SuperPLM folder, or a DeepSpeed checkpoint directory consolidated on the fly (refusing pickles that
    could run code unless `trust_checkpoint`)."""
    path = Path(path)
    if path.exists() and not is_supernet_folder(path):
        return load_deepspeed_supernet(path, trust_checkpoint)
    return load_supernet(path)  # which also names a missing path


def load_deepspeed_supernet(path: str | Path, trust_checkpoint: bool = False) -> tuple[SuperBert, dict[str, Any]]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, tag = resolve(Path(path))
    record = validate(root / tag)
    if "supernet_config" not in record:
        raise CheckpointError(f"checkpoint {root / tag} does not record its SuperBert config")
    model = SuperBert(SuperBertConfig.from_dict(record["supernet_config"]))
    try:
        with trusted_checkpoint(root / tag, trust_checkpoint):
            full = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    except CheckpointError:
        raise
    except Exception as err:  # DeepSpeed raises assorted errors for damaged shards
        raise CheckpointError(f"could not consolidate checkpoint {root / tag}: {err}") from None
    state = {k[len(SUPERNET_PREFIX):]: v.float() for k, v in full.items() if k.startswith(SUPERNET_PREFIX)}
    load_weights_into(model, state, str(root / tag))
    meta = {k: v for k, v in record.items() if k not in {"files", "supernet_config"}}
    meta["checkpoint"] = str(root / tag)
    return model.eval(), meta


def consolidated_extras(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Trained weights outside the supernet (e.g. the KD projection), for continuing training elsewhere."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root, tag = resolve(Path(path))
    with trusted_checkpoint(root / tag, trust_checkpoint):
        full = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    return {k: v for k, v in full.items() if not k.startswith(SUPERNET_PREFIX)}

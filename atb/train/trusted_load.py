"""Reading DeepSpeed checkpoints without running code they might carry.

DeepSpeed calls `torch.load(..., weights_only=False)` itself, so a crafted `.pt` in a checkpoint folder
would run whatever its pickle names. Before DeepSpeed touches a folder, every pickle in it is scanned
(without unpickling) for the globals it would import; anything beyond tensors and DeepSpeed's few state
classes is refused unless the user says `--trust_checkpoint true`. While DeepSpeed then loads, torch's own
`TORCH_FORCE_WEIGHTS_ONLY_LOAD` switch makes its `torch.load` calls use the restricted unpickler, with those
classes allowed through `torch.serialization.safe_globals`.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


class CheckpointError(ValueError):
    """A checkpoint that is damaged, incomplete, or would run code when loaded."""


FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
TRUST_HINT = "pass --trust_checkpoint true only if you trust whoever wrote it"


def deepspeed_state_classes() -> list[type]:
    """The classes DeepSpeed's optimizer states pickle (as found in checkpoints of every ZeRO stage)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def check_pickles(folder: Path, trust: bool = False) -> None:
    """Refuse `folder` if any of its `.pt` files would import more than tensors and DeepSpeed state."""
    allowed = {_qualified(c) for c in deepspeed_state_classes()}
    for path in sorted(folder.rglob("*.pt")):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except (RuntimeError, ValueError, OSError, EOFError, MemoryError, pickle.UnpicklingError,
                zipfile.BadZipFile, IndexError, KeyError) as err:
            raise CheckpointError(f"checkpoint file {path} is corrupt ({type(err).__name__}: {str(err)[:200]}); "
                                  "resume from or load another checkpoint") from None
        unexpected = sorted(set(names) - allowed)
        if unexpected and not trust:
            raise CheckpointError(f"checkpoint file {path} would import {unexpected[:5]} when loaded, which can run "
                                  f"code; atb's checkpoints never do. Refusing to load it: {TRUST_HINT}")


@contextmanager
def restricted_loads(trust: bool = False) -> Iterator[None]:
    """Every `torch.load` inside (DeepSpeed's too) uses torch's weights-only unpickler, unless `trust`."""
    if trust:
        yield
        return
    before = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_state_classes()):
            yield
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"a checkpoint file holds more than tensors ({str(err).splitlines()[0][:200]}); "
                              f"{TRUST_HINT}") from None
    finally:
        if before is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = before


@contextmanager
def trusted_checkpoint(folder: Path, trust: bool = False) -> Iterator[None]:
    """Scan `folder`'s pickles, then load inside `restricted_loads`; damage surfaces as one CheckpointError."""
    check_pickles(folder, trust)
    try:
        with restricted_loads(trust):
            yield
    except (RuntimeError, MemoryError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {folder} could not be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''}); it is corrupt or from "
                              "another model: resume from or load another checkpoint") from None

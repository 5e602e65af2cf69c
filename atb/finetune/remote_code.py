"""Whether a model folder's own Python code may run when transformers loads it.

atb's TinyBert exports carry their modeling file (`auto_map` points at it), which transformers only imports
with `trust_remote_code=True`. That is allowed when the file is byte-for-byte this atb's modeling file; any
other code, or an edited copy, runs only when the user passes `--trust_remote_code true`.
"""

from __future__ import annotations

from pathlib import Path

from atb.fsutil import file_sha256, read_json
from atb.model import tiny
from atb.model.extract import MODELING_FILE, MODELING_MODULE

HINT = "pass --trust_remote_code true only if you trust whoever wrote it"


def atb_modeling_sha256() -> str:
    """The hash of the modeling file this atb writes into its exports."""
    return file_sha256(Path(tiny.__file__))


def _modules_named(auto_map: dict) -> set[str]:
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, (list, tuple)) else [v]) if r]
    return {str(r).split("--")[-1].rsplit(".", 1)[0] for r in refs}


def allow_remote_code(model_dir: Path, user_trusts: bool) -> bool:
    """`trust_remote_code` for `model_dir`: False when it needs no code, True for atb's own unmodified
    modeling file or when the user trusts it; anything else is refused with the reason."""
    config = read_json(model_dir / "config.json", "model config")
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if not auto_map or user_trusts:
        return bool(auto_map)
    modules = _modules_named(auto_map)
    if modules != {MODELING_MODULE}:
        raise ValueError(f"{model_dir / 'config.json'} maps its classes to code {sorted(modules)}, not atb's "
                         f"{MODELING_FILE}; that code would run when the model loads: {HINT}")
    modeling = model_dir / MODELING_FILE
    if not modeling.is_file():
        raise FileNotFoundError(f"{modeling} is missing; re-export the model with tools/extract.py")
    digest = file_sha256(modeling)
    if digest != atb_modeling_sha256():
        recorded = _recorded_sha256(model_dir)
        why = ("was changed after atb exported it" if recorded and recorded != digest
               else "is not this atb's modeling file (another atb version, or edited)")
        raise ValueError(f"{modeling} {why}: its code would run when the model loads. Re-export the model with "
                         f"this atb, or {HINT}")
    return True


def _recorded_sha256(model_dir: Path) -> str | None:
    path = model_dir / "atb_arch.json"
    if not path.is_file():
        return None
    try:
        record = read_json(path, "atb export record")
    except ValueError:
        return None
    return record.get("modeling_sha256") if isinstance(record, dict) else None

"""DeepSpeed JSON configs from `ds_configs/`, with their "auto" values filled from the run's arguments.

The JSON files say *how* to train (ZeRO stage, precision, offload); the CLI says *how much* (batch, lr,
steps). Filling "auto" keeps one source of truth for each value, and any "auto" left unfilled is an error
rather than something DeepSpeed would silently interpret.

The bf16 configs set `"check_grad_overflow": false`: DeepSpeed's per-gradient inf/NaN scan before every step
costs host time each step (bench/RESULTS.md), and bf16, with fp32's exponent range, has no loss scale for
it to protect. A diverged run is stopped by the training loop's finite-loss check instead.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"


def resolve_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = CONFIG_DIR / (name_or_path if name_or_path.endswith(".json") else f"{name_or_path}.json")
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.json")) if CONFIG_DIR.is_dir() else []
    raise FileNotFoundError(f"DeepSpeed config {name_or_path!r} not found (a path, or one of {known})")


# torch's AdamW (foreach kernels on CUDA, over ZeRO's flat partitions) rather than DeepSpeed's FusedAdam:
# FusedAdam is JIT-built on first use, which needs nvcc matching torch's CUDA and time on every fresh
# machine, and DeepSpeed 0.19 cannot build it where TORCH_CUDA_ARCH_LIST names an arch-specific target
# such as "9.0a" (bench/RESULTS.md, GPU section). A config that says "torch_adam": false gets FusedAdam,
# or, with optimizer offload, DeepSpeedCPUAdam (faster on the CPU than torch's AdamW, also JIT-built; not
# checked on a GPU machine, so the offload configs keep the default that is known to work).
TORCH_ADAM_DEFAULT = True


def load(name_or_path: str, values: dict[str, Any]) -> dict[str, Any]:
    """Read a config and fill its "auto" entries; `values` keys are the config's own key names."""
    path = resolve_path(name_or_path)
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"DeepSpeed config {path} is not valid JSON: {err}") from None
    config = copy.deepcopy(config)
    fills = dict(values)
    fills.setdefault("torch_adam", TORCH_ADAM_DEFAULT)
    stage3 = config.get("zero_optimization", {}).get("stage") == 3
    if stage3:
        fills.setdefault("stage3_param_persistence_threshold", 10_000)
        fills.setdefault("stage3_prefetch_bucket_size", 50_000_000)
    _fill(config, fills, path)
    return config


def _fill(node: Any, fills: dict[str, Any], path: Path, where: str = "") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else key
            if value == "auto":
                if key not in fills:
                    raise ValueError(f"DeepSpeed config {path}: '{here}' is \"auto\" but atb has no value for it")
                node[key] = fills[key]
            else:
                _fill(value, fills, path, here)


def precision(config: dict[str, Any]) -> str:
    if config.get("bf16", {}).get("enabled"):
        return "bf16"
    if config.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))

"""The runtimes a latency can mean, and ONNX Runtime sessions whose options are set explicitly and recorded.

ORT's defaults depend on the machine (intra-op threads = cores) and the version (optimisation level), so
a latency is only reproducible with the options it was taken under: every session is built here, and the
options it used are returned with it to be stored next to the numbers.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

TORCH = "torch"
ORT_FP32 = "onnxruntime"
ORT_INT8 = "onnxruntime-int8"
RUNTIMES = (TORCH, ORT_FP32, ORT_INT8)
ONNX_EXTRA = "pip install 'atb[onnx]'"
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # what the extra installs: the format, the exporter, the runtime
PROVIDER = "CPUExecutionProvider"


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


def require(module: str) -> Any:
    """Import an optional ONNX package, or fail with one line naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(f"the ONNX runtime path needs the '{module.split('.')[0]}' package, which is not "
                         f"installed: install the onnx extra ({ONNX_EXTRA})") from None


def check_onnx_installed(what: str) -> None:
    """Fail before any work when the onnx extra is missing, found without importing it (a CLI's input
    checks stay instant); `require` imports each package where it is used."""
    missing = [m for m in ONNX_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{what} needs the {', '.join(missing)} package(s): install the onnx extra ({ONNX_EXTRA})")


def check_same_runtime(found: str | None, asked: str | None, what: str) -> None:
    """A latency of one runtime says nothing about another: mixing them is an error, not a warning."""
    found = found or TORCH
    if asked and check_runtime(asked) != found:
        raise ValueError(f"{what} was measured on runtime '{found}', but runtime '{asked}' was asked for; "
                         f"measure a table and fit a predictor with `tools/latency.py measure --runtime {asked}`")


def session_options(threads: int) -> tuple[Any, dict[str, Any]]:
    """SessionOptions for a latency-faithful CPU session, and the record of what was set."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    record = {"provider": PROVIDER, "intra_op_threads": threads, "inter_op_threads": 1,
              "execution_mode": "sequential", "graph_optimization": "ORT_ENABLE_ALL",
              "onnxruntime": ort.__version__}
    return options, record


def open_session(path: str | Path, threads: int = 1) -> tuple[Any, dict[str, Any]]:
    """An inference session of an ONNX file on the CPU provider, and its recorded options."""
    ort = require("onnxruntime")
    options, record = session_options(threads)
    session = ort.InferenceSession(str(path), sess_options=options, providers=[PROVIDER])
    return session, record

"""The demo's deployment check: each developed model and the source exported to ONNX (int8 dynamic
quantization) and timed on ONNX Runtime with the settings of the demo's latency table, one after the
other, so that the report shows whether a speed-up found in PyTorch holds where such models are served.

    python -m atb.demo.deploy_latency export FOLDER [FOLDER ...]   # several processes may share the work
    python -m atb.demo.deploy_latency time OUT_DIR                   # alone on the machine: it times
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

from atb.deploy.latency import measure_folder_latency
from atb.deploy.onnx_export import export_folder
from atb.deploy.runtime import ORT_INT8
from atb.fsutil import read_json, write_json_atomic
from atb.latency.measure import MeasureSettings
from atb.latency.predictor import LatencyPredictor

RESULT_FILE = "latency.json"
SOURCE_ROW = "source"


def deploy_folders(out: Path) -> dict[str, Path]:
    """Row name -> folder to export and time: each developed model, and a copy of the (ordered) source
    with only its config and weights, so that the export never writes into a folder the user gave."""
    manifest = read_json(out / "develop" / "manifest.json", "develop manifest")["models"]
    return {**{row["arch_name"]: Path(row["path"]) for row in manifest}, SOURCE_ROW: out / "deploy" / SOURCE_ROW}


def copy_source(out: Path) -> None:
    """The source as the demo's teacher holds it (ordered: the same function), config and weights only."""
    source, dest = out / "pretrain" / "source_ordered", out / "deploy" / SOURCE_ROW
    dest.mkdir(parents=True, exist_ok=True)
    for path in [source / "config.json", *sorted(source.glob("*.safetensors"))]:
        shutil.copy2(path, dest / path.name)


def time_folders(out: Path) -> Path:
    """Median ms of every deploy folder on ONNX Runtime int8, written to <out>/deploy/latency.json."""
    # the predictor's batch, sequence and threads; on the CPU, where ONNX Runtime int8 serves
    recorded = MeasureSettings(**LatencyPredictor.load(out / "latency" / "predictor").settings)
    settings = dataclasses.replace(recorded, device="cpu", dtype="float32")
    rows = {}
    for name, folder in deploy_folders(out).items():
        rows[name] = round(float(measure_folder_latency(folder, ORT_INT8, settings).median_ms), 3)
        print(f"{name}: {rows[name]:.2f} ms on {ORT_INT8}", flush=True)
    result = out / "deploy" / RESULT_FILE
    write_json_atomic(result, {"settings": vars(settings), "runtime": ORT_INT8, "head": "encoder", "ms": rows})
    return result


def main(argv: list[str]) -> None:
    if argv[:1] == ["export"]:
        for folder in argv[1:]:
            export_folder(folder, head="encoder", int8=True, overwrite=True)
    elif argv[:1] == ["time"] and len(argv) == 2:
        print(f"wrote {time_folders(Path(argv[1]))}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

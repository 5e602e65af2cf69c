"""Latency of architectures on the device you deploy to: measure, fit a predictor, predict.

    python tools/latency.py measure --space mlm --n 80 --out runs/latency/mlm_cpu1.jsonl   # resumable
    python tools/latency.py fit --table runs/latency/mlm_cpu1.jsonl --out runs/latency/mlm_cpu1
    python tools/latency.py predict --predictor runs/latency/mlm_cpu1 --archs L4_H512_A8_Q512_F2048 \
        --reference bert-base --targets 12ms,4x

Defaults follow the paper: CPU, 1 thread, batch 1, sequence 128. `--device cuda` times with CUDA events.
`--runtime onnxruntime` or `onnxruntime-int8` times each arch exported to ONNX (int8: dynamically quantized)
in ONNX Runtime instead of PyTorch eager; the table and its predictor carry the runtime (needs atb[onnx]).
"""

from __future__ import annotations

from atb.cli import run_subcommands
from atb.latency.jobs import FitConfig, MeasureConfig, PredictConfig, run_fit, run_measure, run_predict

if __name__ == "__main__":
    run_subcommands({"measure": (MeasureConfig, run_measure), "fit": (FitConfig, run_fit),
                     "predict": (PredictConfig, run_predict)}, prog="latency")

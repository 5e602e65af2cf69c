"""Latency of architectures on a target device: measure a table, fit a predictor, resolve targets.

    measure.py     time one exported arch (CPU threads or CUDA events), robust to a shared machine
    contention.py  reference probe and /proc load, the defences against other jobs on the CPU
    sampling.py    which archs to measure (stratified over the space)
    table.py       the JSONL latency table (append-only, resumable)
    features.py    FLOPs, params and the log features the predictor sees
    predictor.py   LatencyPredictor (layered exponential-unit nets; safetensors + JSON)
    metrics.py     MAPE, RMSE, R², Kendall tau, noise floor
    evaluation.py  held-out split, fit the predictor and a linear baseline on it, report
    targets.py     "12ms" / "4x" (over the largest arch or BERT-base) -> milliseconds
    jobs.py        the measure / fit / predict jobs of tools/latency.py
"""

from atb.latency.evaluation import LinearBaseline
from atb.latency.measure import Measurement, MeasureSettings, measure_latency
from atb.latency.predictor import FitOptions, LatencyPredictor
from atb.latency.sampling import sample_archs
from atb.latency.table import latencies, read_table
from atb.latency.targets import REFERENCE_ARCHS, parse_target, reference_arch

__all__ = [
    "FitOptions", "LatencyPredictor", "LinearBaseline", "Measurement", "MeasureSettings", "REFERENCE_ARCHS",
    "latencies", "measure_latency", "parse_target", "read_table", "reference_arch", "sample_archs",
]

"""Time one architecture's inference on the target device.

Latency is measured on the *exported* model (`new_masked_lm`: a transformers BertModel when qkv == hidden,
a TinyBertModel otherwise), never on the sliced supernet, whose slicing and masking overhead would bias
every number. Only the encoder (`model.bert`) is timed: the MLM head is not part of a deployed
classifier/QA model. Weights are freshly initialised; their values do not change the work done.

Each measurement warms up, disables the garbage collector while timing, repeats at least `repeats` times
(more for fast models, until `min_time_s` of timed work) and reports the median with p10/p90 of the wall
clock, the latency a user of the model sees. For tables taken on a CPU shared with other jobs two opt-in
defences keep the numbers those of a quiet machine:
- clock="cpu" (one thread only) times the thread's CPU time, which leaves out the time the scheduler gave
  the core to someone else (rows keep the wall-clock median too);
- probe=True normalises every forward by a small reference probe timed right before and after it
  (`contention.py`), which cancels slowdowns from cache and memory contention or a busy host.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from atb.deploy.ort_forward import onnx_forward
from atb.deploy.runtime import TORCH, check_runtime, session_options
from atb.latency import contention
from atb.model.elastic import SuperBertConfig
from atb.model.extract import default_model_config, new_masked_lm
from atb.space import Arch

DTYPES = ("float32", "float16", "bfloat16")  # torch's names, as latency tables record them


@dataclass(frozen=True)
class MeasureSettings:
    """Where and how latency is measured; stored with every table row and in the predictor."""

    device: str = "cpu"  # "cpu" or "cuda" (or "cuda:1")
    threads: int = 1  # CPU intra-op threads (the paper: 1); ignored on CUDA
    batch: int = 1
    seq: int = 128
    dtype: str = "float32"
    clock: str = "wall"  # "wall", "cpu" (thread CPU time, 1 thread only), or "auto": cpu when it applies
    probe: bool = False  # CPU: normalise each forward by a reference probe (contention.py), for shared machines
    warmup: int = 5
    repeats: int = 20  # minimum number of timed forwards
    min_time_s: float = 0.2  # fast models repeat until this much time has been timed ...
    max_repeats: int = 500  # ... but never more than this many forwards
    runtime: str = "torch"  # torch (eager), onnxruntime or onnxruntime-int8 (the model exported to ONNX)

    def __post_init__(self) -> None:
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("threads", "batch", "seq", "repeats", "max_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0 or self.min_time_s < 0:
            raise ValueError("warmup and min_time_s must be >= 0")
        if self.max_repeats < self.repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) must be >= repeats ({self.repeats})")
        if check_runtime(self.runtime) != TORCH and (self.device != "cpu" or self.dtype != "float32"):
            raise ValueError(f"runtime {self.runtime!r} is measured on device cpu with dtype float32 "
                             f"(onnxruntime's CPU provider; it quantizes to int8 itself)")
        if self.clock not in ("auto", "cpu", "wall"):
            raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {self.clock!r}")
        if self.clock == "cpu" and (self.device != "cpu" or self.threads != 1):
            raise ValueError("clock='cpu' (thread CPU time) is only a latency for device=cpu with threads=1")

    @property
    def resolved_clock(self) -> str:
        if self.device != "cpu":
            return "cuda_events"
        if self.clock == "auto":
            return "cpu" if self.threads == 1 else "wall"
        return self.clock

    @property
    def uses_probe(self) -> bool:
        return self.probe and self.device == "cpu"

    def identity(self) -> dict[str, Any]:
        """The settings that change what a latency means; rows that differ here cannot share a table."""
        return {"device": self.device, "threads": self.threads if self.device == "cpu" else None,
                "batch": self.batch, "seq": self.seq, "dtype": self.dtype, "clock": self.resolved_clock,
                "probe": self.uses_probe, "runtime": self.runtime}


@dataclass
class Measurement:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    repeats: int
    times_ms: list[float] = field(repr=False, default_factory=list)
    other_load: float | None = None  # cores other processes used while timing (contention.py)
    raw_median_ms: float | None = None  # before probe normalisation
    wall_median_ms: float | None = None  # wall-clock median of the same forwards
    probe_ms: float | None = None  # the probe's quiet time the normalisation used
    slowdown: float | None = None  # median probe time while measuring / its quiet time

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["times_ms"] = [round(t, 4) for t in self.times_ms]
        return data


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_ms: list[float], **extra: Any) -> Measurement:
    ordered = sorted(times_ms)
    return Measurement(median_ms=statistics.median(ordered), p10_ms=_quantile(ordered, 0.1),
                       p90_ms=_quantile(ordered, 0.9), min_ms=ordered[0], mean_ms=statistics.fmean(ordered),
                       repeats=len(ordered), times_ms=list(times_ms), **extra)


def device_description(settings: MeasureSettings) -> dict[str, Any]:
    """What a reader needs to reproduce or compare a latency: hardware, software and input shape."""
    desc: dict[str, Any] = {**settings.identity(), "torch": torch.__version__}
    if settings.device == "cpu":
        desc["name"] = contention.cpu_name()
        desc["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if settings.runtime != TORCH:
            desc["onnxruntime"] = session_options(settings.threads)[1]
    else:
        desc["name"] = torch.cuda.get_device_name(torch.device(settings.device))
        desc["cuda"] = torch.version.cuda
    return desc


def measure_latency(arch: Arch, model_config: SuperBertConfig | None = None,
                    settings: MeasureSettings | None = None, seed: int = 0) -> Measurement:
    """Median inference latency (ms) of the exported encoder of `arch` under `settings`."""
    settings = settings or MeasureSettings()
    model_config = model_config or default_model_config(settings.seq)
    if settings.seq > model_config.max_position_embeddings:
        raise ValueError(f"seq {settings.seq} exceeds max_position_embeddings "
                         f"{model_config.max_position_embeddings} of the model config")
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {settings.device!r} requested but CUDA is not available here")
    torch.manual_seed(seed)
    encoder = new_masked_lm(arch, model_config).bert.eval()
    encoder.to(device=torch.device(settings.device), dtype=getattr(torch, settings.dtype))
    inputs = random_inputs(model_config.vocab_size, settings, seed)
    if settings.runtime != TORCH:
        encoder = onnx_forward(encoder, "encoder", inputs, settings.runtime, settings.threads)
    return time_forward(encoder, inputs, settings)


def random_inputs(vocab_size: int, settings: MeasureSettings, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full (unpadded) batch of random tokens of the settings' shape, on the settings' device."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (settings.batch, settings.seq), generator=g)
    device = torch.device(settings.device)
    return {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
            "token_type_ids": torch.zeros_like(input_ids).to(device)}


def time_forward(forward: Callable[..., Any], inputs: dict[str, torch.Tensor], settings: MeasureSettings
                 ) -> Measurement:
    """Time `forward(**inputs)` (a torch module, or anything called the same way) under `settings`."""
    before = contention.snapshot()
    if settings.device.startswith("cuda"):
        times, extra = _time_cuda(forward, inputs, settings), {}
    else:
        times, extra = _time_cpu(forward, inputs, settings)
    load = contention.other_load(before, contention.snapshot())
    return summarize(times, other_load=None if load is None else round(load, 4), **extra)


def _enough(times: list[float], settings: MeasureSettings) -> bool:
    if len(times) >= settings.max_repeats:
        return True
    return len(times) >= settings.repeats and sum(times) >= settings.min_time_s * 1000.0


def _time_cpu(encoder: torch.nn.Module, inputs: dict[str, torch.Tensor], settings: MeasureSettings
              ) -> tuple[list[float], dict[str, Any]]:
    """Forwards alternate with probe forwards; each is scaled by the probe's quiet/now ratio around it."""
    clock = time.thread_time if settings.resolved_clock == "cpu" else time.perf_counter
    previous_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    torch.set_num_threads(settings.threads)
    try:
        probe = contention.shared_probe(settings.resolved_clock, clock) if settings.uses_probe else None
        with torch.inference_mode():
            for _ in range(settings.warmup):
                encoder(**inputs)
            gc.collect()
            gc.disable()
            raw: list[float] = []
            wall: list[float] = []
            probe_around: list[float] = []
            probe_before = probe.time_once() if probe else 0.0
            while not _enough(raw, settings):
                start_wall, start = time.perf_counter(), clock()
                encoder(**inputs)
                raw.append((clock() - start) * 1000.0)
                wall.append((time.perf_counter() - start_wall) * 1000.0)
                if probe is not None:
                    probe_after = probe.time_once()
                    probe_around.append((probe_before + probe_after) / 2)
                    probe_before = probe_after
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(previous_threads)
    extra: dict[str, Any] = {"raw_median_ms": round(statistics.median(raw), 5),
                             "wall_median_ms": round(statistics.median(wall), 5)}
    if probe is None:
        return raw, extra
    contention.remember_quiet(probe)
    quiet = probe.quiet_ms  # final value: the quietest the probe has been, this arch's window included
    normalised = [t * quiet / p for t, p in zip(raw, probe_around)]
    extra.update(probe_ms=round(quiet, 5), slowdown=round(statistics.median(probe_around) / quiet, 4))
    return normalised, extra


def _time_cuda(encoder: torch.nn.Module, inputs: dict[str, torch.Tensor], settings: MeasureSettings) -> list[float]:
    """Device events time the GPU work itself; host launch overhead shows only if the GPU waits on it."""
    device = next(encoder.parameters()).device
    with torch.inference_mode(), torch.cuda.device(device):
        for _ in range(max(settings.warmup, 1)):
            encoder(**inputs)
        torch.cuda.synchronize(device)
        times: list[float] = []
        while not _enough(times, settings):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            encoder(**inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    return times

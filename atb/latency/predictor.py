"""Latency predictor: arch -> milliseconds on the device a table was measured on.

The model has the shape of the thing it predicts. A forward is a fixed part (embeddings, python) plus
`layers` identical layers, and the cost of a layer is a sum of a few power laws of its widths (the GEMMs
~ hidden·(qkv+ffn), attention ~ seq²·qkv, per-layer overheads), so

    ms = exp(fixed · x_fixed + c)  +  layers · Σ_k exp(w_k · x_layer + b_k)

over z-scored log features (`features.py`). It is a one-hidden-layer network with exponential units,
trained on log(ms), so its loss is relative error, what matters from the smallest to the largest arch.
Each unit starts at, and is pulled towards, one physical cost law (`UNIT_LAWS`: GEMM work, attention
work, a constant, activation size) by a cross-validated ridge: a dozen measured archs then fit those laws'
scales, and a large table bends them as far as it shows. It beat a plain tanh MLP over the same features
in cross-validation (bench/RESULTS.md): knowing that layers multiply is worth more than flexibility with a
few dozen training points. The same structure extrapolates in `layers` exactly, which is what a BERT-base
reference outside the space needs. A few seeds are averaged. Saved as safetensors (weights,
normalisation) + JSON (everything else).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from atb.fsutil import atomic_dir, read_json
from atb.latency.features import FIXED_FEATURES, LAYER_FEATURES, feature_matrix
from atb.space import Arch, SearchSpace

WEIGHTS_FILE = "predictor.safetensors"
META_FILE = "predictor.json"
FORMAT_VERSION = 2


class _LayeredLatencyNet(nn.Module):
    """log ms = log(exp(fixed part) + layers * sum of per-layer power-law terms)."""

    def __init__(self, n_layer_features: int, n_fixed_features: int, terms: int):
        super().__init__()
        self.terms = nn.Linear(n_layer_features, terms)
        self.fixed = nn.Linear(n_fixed_features, 1)

    def forward(self, x_layer: torch.Tensor, x_fixed: torch.Tensor, log_layers: torch.Tensor) -> torch.Tensor:
        per_layer = torch.logsumexp(self.terms(x_layer), dim=-1)
        return torch.logaddexp(self.fixed(x_fixed).squeeze(-1), per_layer + log_layers)


@dataclass
class FitOptions:
    terms: int = 4  # power-law units per layer
    ridge: float | None = None  # L2 pull of the exponents towards UNIT_LAWS; None: cross-validated
    ridge_folds: int = 5
    adam_steps: int = 100  # a rough start for ...
    lbfgs_iters: int = 400  # ... full-batch L-BFGS to convergence
    lr: float = 1e-2  # of the Adam start
    ensemble: int = 3
    seed: int = 0


# The law each power-law unit starts at and is pulled towards: latency proportional to the feature's
# quantity (exponent 1 on its log), or a constant (None). Units beyond these repeat them.
UNIT_LAWS = ("log_layer_matmul_macs", "log_layer_attention_macs", None, "log_hidden")


def unit_laws(layer_features: list[str], layer_std: np.ndarray, terms: int) -> torch.Tensor:
    """The laws' exponents on the z-scored features: a raw exponent of 1 is the feature's std."""
    laws = torch.zeros(terms, len(layer_features), dtype=torch.float64)
    for k in range(terms):
        law = UNIT_LAWS[k % len(UNIT_LAWS)]
        if law in layer_features:
            j = layer_features.index(law)
            laws[k, j] = float(layer_std[j])
    return laws


def _train_net(x_layer: torch.Tensor, x_fixed: torch.Tensor, log_layers: torch.Tensor, log_ms: torch.Tensor,
               laws: torch.Tensor, opts: FitOptions, seed: int) -> _LayeredLatencyNet:
    """Penalised least squares in log space, solved to convergence: a ridge generalises at least as well as
    stopping an unpenalised fit early and, unlike early stopping, does not underfit a noise-free function."""
    torch.manual_seed(seed)
    net = _LayeredLatencyNet(x_layer.shape[1], x_fixed.shape[1], opts.terms).double()
    log_ms_per_layer = log_ms - log_layers
    with torch.no_grad():
        net.terms.weight.copy_(laws + 0.01 * torch.randn_like(laws))  # seeds differ, so the ensemble does
        # every unit, and the fixed part, starts at an equal share of the measured time
        net.terms.bias.copy_((log_ms_per_layer[:, None] - x_layer @ laws.T).mean(0) - math.log(opts.terms + 1))
        net.fixed.weight.zero_()
        net.fixed.bias.fill_(float(log_ms.mean()) - math.log(opts.terms + 1))

    def objective() -> torch.Tensor:
        error = torch.mean((net(x_layer, x_fixed, log_layers) - log_ms) ** 2)
        return error + opts.ridge * ((net.terms.weight - laws).pow(2).sum() + net.fixed.weight.pow(2).sum())

    adam = torch.optim.Adam(net.parameters(), lr=opts.lr)
    for _ in range(opts.adam_steps):
        adam.zero_grad(set_to_none=True)
        objective().backward()
        adam.step()
    if opts.lbfgs_iters:
        lbfgs = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=opts.lbfgs_iters, history_size=50,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-12)

        def closure() -> torch.Tensor:
            lbfgs.zero_grad(set_to_none=True)
            loss = objective()
            loss.backward()
            return loss

        lbfgs.step(closure)
    return net.eval()


RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # the loss is a squared log error (~MAPE²), features are z-scores


def _choose_ridge(tensors: tuple[torch.Tensor, ...], laws: torch.Tensor, opts: FitOptions) -> float:
    """The ridge of RIDGE_GRID with the lowest k-fold cross-validated error (small tables need more of it)."""
    n = len(tensors[-1])
    folds = max(2, min(opts.ridge_folds, n // 2))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed))
    errors = {}
    for ridge in RIDGE_GRID:
        squared = 0.0
        for fold in range(folds):
            held = torch.zeros(n, dtype=torch.bool)
            held[order[fold::folds]] = True
            net = _train_net(*(t[~held] for t in tensors), laws, dataclasses.replace(opts, ridge=ridge), opts.seed)
            with torch.no_grad():
                squared += float(((net(*(t[held] for t in tensors[:3])) - tensors[3][held]) ** 2).sum())
        errors[ridge] = squared
    return min(errors, key=errors.get)


def _net_inputs(archs: list[Arch], x_layer: np.ndarray, x_fixed: np.ndarray, norm: dict[str, np.ndarray]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z-scored layer features, z-scored fixed features, log(layers)."""
    return (torch.from_numpy((x_layer - norm["layer_mean"]) / norm["layer_std"]),
            torch.from_numpy((x_fixed - norm["fixed_mean"]) / norm["fixed_std"]),
            torch.log(torch.tensor([float(a.layers) for a in archs], dtype=torch.float64)))


def zscore_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    std = x.std(0)
    std[std < 1e-12] = 1.0
    return x.mean(0), std


@dataclass
class LatencyPredictor:
    """Predicts ms for archs; knows the space and the measurement settings it is valid for."""

    units: ClassVar[str] = "ms"
    space: dict[str, Any]
    settings: dict[str, Any]  # device, threads, batch, seq, dtype, clock (MeasureSettings.identity())
    device_info: dict[str, Any]
    layer_features: list[str]
    fixed_features: list[str]
    normalisation: dict[str, np.ndarray]  # layer_mean, layer_std, fixed_mean, fixed_std
    terms: int
    ridge: float
    nets: list[_LayeredLatencyNet]
    statistic: str = "median_ms"
    metrics: dict[str, Any] = field(default_factory=dict)

    # ---- measurement settings, for callers that only need one of them ---------------------------------
    @property
    def device(self) -> str:
        return self.settings["device"]

    @property
    def threads(self) -> int | None:
        return self.settings.get("threads")

    @property
    def runtime(self) -> str:
        return self.settings.get("runtime", "torch")  # predictors from before runtimes: eager PyTorch

    @property
    def batch(self) -> int:
        return self.settings["batch"]

    @property
    def seq(self) -> int:
        return self.settings["seq"]

    def search_space(self) -> SearchSpace:
        return SearchSpace.from_spec(self.space)

    # ---- fitting and prediction ---------------------------------------------------------------------
    @classmethod
    def fit(cls, archs: list[Arch], latencies_ms: list[float] | np.ndarray, space: dict[str, Any],
            settings: dict[str, Any], device_info: dict[str, Any] | None = None,
            options: FitOptions | None = None, statistic: str = "median_ms") -> "LatencyPredictor":
        opts = options or FitOptions()
        y_ms = np.asarray(latencies_ms, float)
        if len(archs) != len(y_ms):
            raise ValueError(f"{len(archs)} archs but {len(y_ms)} latencies")
        if len(archs) < 3:
            raise ValueError(f"need at least 3 measured archs to fit a latency predictor, got {len(archs)}")
        if not np.all(np.isfinite(y_ms)) or np.any(y_ms <= 0):
            raise ValueError("latencies must be finite and positive (milliseconds)")
        if (opts.terms < 1 or opts.ensemble < 1 or opts.adam_steps < 0 or opts.lbfgs_iters < 0
                or (opts.ridge is not None and opts.ridge < 0)):
            raise ValueError(f"bad fit options {opts}: terms and ensemble must be >= 1, the rest >= 0")
        layer_names, fixed_names = list(LAYER_FEATURES), list(FIXED_FEATURES)
        x_layer = feature_matrix(archs, settings["batch"], settings["seq"], layer_names, LAYER_FEATURES)
        x_fixed = feature_matrix(archs, settings["batch"], settings["seq"], fixed_names, FIXED_FEATURES)
        layer_mean, layer_std = zscore_stats(x_layer)
        fixed_mean, fixed_std = zscore_stats(x_fixed)
        normalisation = {"layer_mean": layer_mean, "layer_std": layer_std, "fixed_mean": fixed_mean,
                         "fixed_std": fixed_std}
        tensors = (*_net_inputs(archs, x_layer, x_fixed, normalisation), torch.from_numpy(np.log(y_ms)))
        laws = unit_laws(layer_names, layer_std, opts.terms)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a few hundred numbers per step: threads only add overhead
        try:
            ridge = opts.ridge if opts.ridge is not None else _choose_ridge(tensors, laws, opts)
            opts = dataclasses.replace(opts, ridge=ridge)
            nets = [_train_net(*tensors, laws, opts, opts.seed + k) for k in range(opts.ensemble)]
        finally:
            torch.set_num_threads(previous_threads)
        return cls(space=space, settings=dict(settings), device_info=dict(device_info or {}),
                   layer_features=layer_names, fixed_features=fixed_names, normalisation=normalisation,
                   terms=opts.terms, ridge=ridge, nets=nets, statistic=statistic)

    def predict(self, archs: list[Arch], warn_outside: bool = True) -> np.ndarray:
        """Milliseconds per arch. Archs outside the space are extrapolated (with a warning)."""
        archs = [Arch.parse(a) for a in archs]
        if not archs:
            return np.zeros(0)
        if warn_outside:
            space = self.search_space()
            outside = [a.name for a in archs if not space.contains(a)]
            if outside:
                warnings.warn(f"predicting latency of arch(s) outside space '{space.name}' the predictor was "
                              f"fitted on: {outside[:5]}{'...' if len(outside) > 5 else ''}; this extrapolates")
        x_layer = feature_matrix(archs, self.batch, self.seq, self.layer_features, LAYER_FEATURES)
        x_fixed = feature_matrix(archs, self.batch, self.seq, self.fixed_features, FIXED_FEATURES)
        inputs = _net_inputs(archs, x_layer, x_fixed, self.normalisation)
        with torch.no_grad():
            log_ms = torch.stack([net(*inputs) for net in self.nets]).mean(0)
        return np.exp(log_ms.numpy())

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        tensors = {f"normalisation.{k}": torch.from_numpy(np.ascontiguousarray(v))
                   for k, v in self.normalisation.items()}
        for k, net in enumerate(self.nets):
            tensors.update({f"net{k}.{name}": p.detach().clone().contiguous() for name, p in net.state_dict().items()})
        meta = {"format_version": FORMAT_VERSION, "kind": "atb-latency-predictor", "space": self.space,
                "settings": self.settings, "device_info": self.device_info,
                "layer_features": self.layer_features, "fixed_features": self.fixed_features,
                "terms": self.terms, "ridge": self.ridge, "ensemble": len(self.nets), "statistic": self.statistic,
                "metrics": self.metrics}
        with atomic_dir(path, overwrite=overwrite) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyPredictor":
        folder = Path(path)
        if folder.is_file() and folder.name in (META_FILE, WEIGHTS_FILE):
            folder = folder.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"latency predictor not found: {path} (fit one with `tools/latency.py fit`)")
        meta = read_json(folder / META_FILE, "latency predictor metadata")
        if meta.get("kind") != "atb-latency-predictor" or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder / META_FILE} is not an atb latency predictor of format {FORMAT_VERSION}")
        weights_path = folder / WEIGHTS_FILE
        if not weights_path.is_file():
            raise FileNotFoundError(f"latency predictor weights missing: {weights_path}")
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"latency predictor weights {weights_path} are corrupt or truncated ({err}); fit the "
                             "predictor again with `tools/latency.py fit`") from None
        nets = []
        for k in range(meta["ensemble"]):
            net = _LayeredLatencyNet(len(meta["layer_features"]), len(meta["fixed_features"]), meta["terms"]).double()
            prefix = f"net{k}."
            net.load_state_dict({n[len(prefix):]: t for n, t in tensors.items() if n.startswith(prefix)}, strict=True)
            nets.append(net.eval())
        prefix = "normalisation."
        normalisation = {n[len(prefix):]: t.numpy() for n, t in tensors.items() if n.startswith(prefix)}
        return cls(space=meta["space"], settings=meta["settings"], device_info=meta["device_info"],
                   layer_features=meta["layer_features"], fixed_features=meta["fixed_features"],
                   normalisation=normalisation, terms=meta["terms"], ridge=meta["ridge"], nets=nets,
                   statistic=meta["statistic"], metrics=meta.get("metrics", {}))

"""Numbers that explain an arch's latency, computed from its five fields and the input shape.

A BERT forward is an embedding step plus a stack of identical layers, each a few GEMMs (qkv,
out-projection, two FFN matrices: cost ~ seq * hidden * (qkv + ffn)), an attention core (~ seq² * qkv),
and per-layer fixed costs (kernel launches, LayerNorm, python). Features are logs of these terms, so a
linear function of them is a power law in the dims. Each feature is named; a saved predictor lists the
names it was trained on and recomputes them on load.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from atb.space import Arch

POSITIONS = 512
TOKEN_TYPES = 2


def layer_matmul_macs(a: Arch, seq: int) -> float:
    """Multiply-accumulates of one layer's dense projections for one sequence."""
    return seq * (3 * a.hidden * a.qkv + a.qkv * a.hidden + 2 * a.hidden * a.ffn)


def layer_attention_macs(a: Arch, seq: int) -> float:
    """Scores (Q·Kᵀ) and weighted sum (P·V): seq² per qkv dim each."""
    return 2 * seq * seq * a.qkv


def arch_flops(a: Arch, batch: int = 1, seq: int = 128) -> int:
    """Floating-point operations (2 per MAC) of the encoder forward, embeddings and norms excluded."""
    return int(2 * batch * a.layers * (layer_matmul_macs(a, seq) + layer_attention_macs(a, seq)))


def arch_params(a: Arch, vocab_size: int = 30522) -> int:
    """Parameters of the exported encoder (model.bert, no pooler)."""
    embeddings = (vocab_size + POSITIONS + TOKEN_TYPES) * a.hidden + 2 * a.hidden
    attention = 3 * (a.hidden * a.qkv + a.qkv) + a.qkv * a.hidden + a.hidden + 2 * a.hidden
    ffn = a.hidden * a.ffn + a.ffn + a.ffn * a.hidden + a.hidden + 2 * a.hidden
    return embeddings + a.layers * (attention + ffn)


FeatureFn = Callable[[Arch, int, int], float]

# What one layer costs depends on its widths; how many layers there are multiplies it. The predictor
# keeps that structure, so its per-layer part sees only these (logs of dims and of the work they imply).
LAYER_FEATURES: dict[str, FeatureFn] = {
    "log_hidden": lambda a, b, s: math.log(a.hidden),
    "log_qkv": lambda a, b, s: math.log(a.qkv),
    "log_heads": lambda a, b, s: math.log(a.heads),
    "log_ffn": lambda a, b, s: math.log(a.ffn),
    "log_head_dim": lambda a, b, s: math.log(a.qkv / a.heads),
    "log_layer_matmul_macs": lambda a, b, s: math.log(b * layer_matmul_macs(a, s)),
    "log_layer_attention_macs": lambda a, b, s: math.log(b * layer_attention_macs(a, s)),
    "vanilla": lambda a, b, s: float(a.is_vanilla_bert),  # exported as transformers BertModel: other code
}
# Once per forward: embeddings (a gather and a LayerNorm of width hidden) and the model's python overhead.
FIXED_FEATURES: dict[str, FeatureFn] = {
    "log_hidden": LAYER_FEATURES["log_hidden"],
    "vanilla": LAYER_FEATURES["vanilla"],
}


def feature_matrix(archs: list[Arch], batch: int, seq: int, names: list[str] | tuple[str, ...],
                   registry: dict[str, FeatureFn] = LAYER_FEATURES) -> np.ndarray:
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown latency feature(s) {unknown}; known: {sorted(registry)}")
    return np.array([[registry[n](a, batch, seq) for n in names] for a in archs], dtype=np.float64)

"""Shared fixtures: tiny supernets with perturbed weights, so equality checks cannot pass by symmetry."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

pytest_plugins = ["finetune_setup"]  # the fine-tuning tests' tokenizer and exports


def make_supernet(space: str = "tiny", vocab: int = 100, positions: int = 32, seed: int = 0,
                  attention_scale_dim: int | None = None):
    from atb.model.elastic import SuperBert, SuperBertConfig
    from atb.space import SearchSpace

    torch.manual_seed(seed)
    cfg = SuperBertConfig(space=SearchSpace.load(space).to_spec(), vocab_size=vocab,
                          max_position_embeddings=positions, attention_scale_dim=attention_scale_dim)
    model = SuperBert(cfg).eval()
    with torch.no_grad():  # LayerNorm at exactly 1/0 would hide slicing mistakes in it
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def padded_batch(vocab: int = 100, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


@pytest.fixture
def tiny_supernet():
    return make_supernet("tiny")

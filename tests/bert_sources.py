"""Small BERT-family folders for compression tests: random weights, perturbed so no order is a tie."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

VOCAB = 100


def save_random_bert(folder: Path, layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64,
                     mlm_head: bool = False, seed: int = 0, vocab: int = VOCAB, **config: Any) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, **config)
    model = (BertForMaskedLM if mlm_head else BertModel)(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(folder))
    return folder


def declare_mean_pooling(folder: Path) -> Path:
    """Make `folder` a sentence-transformers model whose sentence vector is the mean over tokens."""
    import json

    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return folder


def padded_batch(seed: int = 0, batch: int = 3, seq: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4:] = 0
    mask[2, seq // 2:] = 0
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def mlm_batch(seed: int = 0, batch: int = 4, seq: int = 12) -> dict[str, torch.Tensor]:
    out = padded_batch(seed, batch, seq)
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.full_like(out["input_ids"], -100)
    pick = (torch.rand(out["input_ids"].shape, generator=g) < 0.3) & out["attention_mask"].bool()
    labels[pick] = out["input_ids"][pick]
    out["labels"] = labels
    return out

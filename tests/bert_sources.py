"""Small BERT-family folders for compression tests: random weights, perturbed so no order is a tie."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from atb.model.bert_source import build_model, content_hash, embedding_settings, read_config, source_dims
from atb.model.elastic import SuperBert, SuperBertConfig
from atb.model.importance import compute_importance
from atb.model.ordering import write_importance, write_ordered_folder
from atb.model.pretrained_init import init_from_pretrained
from atb.source_space import space_from_source
from atb.space import SearchSpace

VOCAB = 100


def save_random_bert(folder: Path, layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64,
                     mlm_head: bool = False, seed: int = 0, vocab: int = VOCAB, **config: Any) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=ffn, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, **config)
    return _perturbed_and_saved((BertForMaskedLM if mlm_head else BertModel)(cfg), folder)


def save_random_roberta(folder: Path, layers: int = 2, hidden: int = 32, heads: int = 4, ffn: int = 64,
                        mlm_head: bool = False, seed: int = 0, vocab: int = VOCAB) -> Path:
    """RoBERTa's layout: one token type, padding id 1, positions counted from 2, LayerNorm epsilon 1e-5."""
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaModel

    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=ffn, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1,
                        layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return _perturbed_and_saved((RobertaForMaskedLM if mlm_head else RobertaModel)(cfg), folder)


def _perturbed_and_saved(model: torch.nn.Module, folder: Path) -> Path:
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


def padded_batch(seed: int = 0, batch: int = 3, seq: int = 12, pad_id: int = 0, pairs: bool = True
                 ) -> dict[str, torch.Tensor]:
    """Right-padded rows of random tokens; with `pairs`, the second half is segment 1 (BERT's sentence pairs)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq - 4:] = 0
    mask[2, seq // 2:] = 0
    ids[mask == 0] = pad_id
    types = torch.zeros_like(ids)
    if pairs:
        types[:, seq // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def mlm_batch(seed: int = 0, batch: int = 4, seq: int = 12, pairs: bool = True) -> dict[str, torch.Tensor]:
    out = padded_batch(seed, batch, seq, pairs=pairs)
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.full_like(out["input_ids"], -100)
    pick = (torch.rand(out["input_ids"].shape, generator=g) < 0.3) & out["attention_mask"].bool()
    labels[pick] = out["input_ids"][pick]
    out["labels"] = labels
    return out


# ---- importance and the ordered supernet, as a compression run makes them ----------------------------------
def importance_of(folder, estimator="activation"):
    config = read_config(folder)
    dims = source_dims(config)
    model = build_model(folder, config, with_mlm_head=estimator == "taylor")
    batches = [mlm_batch(seed=s, pairs=dims.type_vocab_size > 1) for s in range(3)]
    return compute_importance(model, batches, dims, estimator), dims


def from_model_space(dims) -> SearchSpace:
    return SearchSpace.from_spec(space_from_source(dims.layers, dims.hidden, dims.heads, dims.qkv, dims.ffn))


def ordered_supernet(folder, importance, dims, tmp_path, pooler=False):
    """The supernet of the from_model space initialised from `folder` reordered by every score."""
    order = importance.order(within_heads=True)
    space = from_model_space(dims)
    write_importance(tmp_path / "imp.json", importance, order, folder, content_hash(folder), space.to_spec(), {})
    ordered = write_ordered_folder(folder, order, tmp_path / "ordered", tmp_path / "imp.json")
    supernet = SuperBert(SuperBertConfig(space=space.to_spec(), vocab_size=dims.vocab_size,
                                         max_position_embeddings=dims.max_positions, pooler=pooler,
                                         **embedding_settings(read_config(folder)))).eval()
    init_from_pretrained(supernet, ordered)
    return supernet, order

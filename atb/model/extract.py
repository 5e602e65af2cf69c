"""Sub-network → standalone Hugging Face folder.

An arch with qkv == hidden whose classifier reads [CLS] is exactly a stock BERT, so it is written as a
vanilla `bert` folder that any transformers install loads. Other archs, and every arch of a SuperPLM whose
classifiers read the mean over tokens, are written as TinyBert with `auto_map` and the modeling file
copied in, so `trust_remote_code=True` loads them without atb. Either way the folder appears in one
rename, complete, with `atb_arch.json` recording where it came from. `write_export` is the one writer of
such a folder (`tools/extract.py` and the students of `tools/develop.py` both go through it).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, PreTrainedModel
from transformers.models.bert.modeling_bert import BertPooler

from atb.fsutil import atomic_dir, file_sha256, write_json_atomic
from atb.model import tiny
from atb.model.elastic import SuperBert, SuperBertConfig
from atb.space import Arch

ARCH_JSON = "atb_arch.json"
MODELING_MODULE = "modeling_atb_tinybert"  # what an export's auto_map names
MODELING_FILE = f"{MODELING_MODULE}.py"


def is_stock_bert(arch: Arch, cfg: SuperBertConfig) -> bool:
    return arch.is_vanilla_bert and cfg.classifier_pooling == "cls"


def tinybert_config(**fields: Any) -> tiny.TinyBertConfig:
    """A TinyBert config whose folder loads through the modeling file written beside it."""
    config = tiny.TinyBertConfig(**fields)
    config.auto_map = {auto: f"{MODELING_MODULE}.{cls}" for auto, cls in tiny.AUTO_MAP.items()}
    return config


def hf_config_for(arch: Arch, cfg: SuperBertConfig) -> BertConfig | tiny.TinyBertConfig:
    """The transformers config of `arch` with the supernet's vocabulary, positions, dropout and pooling."""
    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab_size, hidden_size=arch.hidden, num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads, intermediate_size=arch.ffn, hidden_act="gelu",
        hidden_dropout_prob=cfg.hidden_dropout_prob, attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
        initializer_range=cfg.initializer_range, layer_norm_eps=cfg.layer_norm_eps, pad_token_id=cfg.pad_token_id,
    )
    if is_stock_bert(arch, cfg):
        return BertConfig(**common)
    return tinybert_config(qkv_size=arch.qkv, classifier_pooling=cfg.classifier_pooling, **common)


def build_masked_lm(super_model: SuperBert, arch: Arch) -> PreTrainedModel:
    """The sub-network as an in-memory transformers MaskedLM model (weights copied, not shared)."""
    state = super_model.sub_state_dict(arch)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    model = new_masked_lm(arch, super_model.config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def default_model_config(seq: int, vocab_size: int = 30522) -> SuperBertConfig:
    """Vocabulary and positions of a standard BERT; only these (not the space) shape the exported model."""
    return SuperBertConfig(space={}, vocab_size=vocab_size, max_position_embeddings=max(512, seq))


def new_masked_lm(arch: Arch, cfg: SuperBertConfig) -> PreTrainedModel:
    """A freshly initialised exported-format model of `arch` (what latency is measured on), with a slot for
    the SuperPLM's pooler when it carries one (frozen, like the SuperPLM's)."""
    stock = is_stock_bert(arch, cfg)
    model = (BertForMaskedLM if stock else tiny.TinyBertForMaskedLM)(hf_config_for(arch, cfg))
    if cfg.pooler:  # a MaskedLM model has no pooler of its own; saved with it, the export's classifiers load it
        model.bert.pooler = (BertPooler if stock else tiny.TinyBertPooler)(model.config).requires_grad_(False)
    return model


def extract(super_model: SuperBert, arch: Arch, out_dir: str | Path, tokenizer: str | Path | None = None,
            provenance: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write sub-network `arch` of `super_model` to `out_dir` as a Hugging Face folder."""
    super_model.space.validate(arch)
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"output folder {out_dir} already exists; choose another or pass --overwrite")
    tok = AutoTokenizer.from_pretrained(str(tokenizer)) if tokenizer is not None else None
    if tok is not None and len(tok) > super_model.config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer} has {len(tok)} tokens but the SuperPLM vocab is "
                         f"{super_model.config.vocab_size}: they do not belong together")
    model = build_masked_lm(super_model, arch)
    return write_export(model, arch, out_dir, tok, {"space": super_model.space.to_spec(), **(provenance or {})},
                        overwrite)


def write_export(model: PreTrainedModel, arch: Arch, out_dir: str | Path, tokenizer: Any, record: dict[str, Any],
                 overwrite: bool = False) -> Path:
    """Weights (safetensors), the modeling file unless it is a vanilla BERT, the tokenizer (when given) and
    atb_arch.json (arch, format, parameter count and `record`), appearing in one rename."""
    out_dir, stock = Path(out_dir), model.config.model_type == "bert"
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if not stock:
            shutil.copyfile(tiny.__file__, tmp / MODELING_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        # the modeling file's hash lets fine-tuning tell atb's own file from an edited one before running it
        code = {} if stock else {"modeling_sha256": file_sha256(tmp / MODELING_FILE)}
        write_json_atomic(tmp / ARCH_JSON, {"arch": arch.to_dict(), "arch_name": arch.name,
                                            "format": "bert" if stock else "atb_tinybert",
                                            "params": count_params(model), **code, **record})
    return out_dir


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

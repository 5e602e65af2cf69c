"""A pre-trained BERT-family folder that atb compresses: its config, weights, content hash and a model.

BERT-family means transformers' `bert` or atb's own `atb_tinybert` exports: the parameter names and the
block structure SuperBert mirrors. RoBERTa and XLM-R are read as the BERT they are: the same blocks under
other names, one token type, and positions counted from the padding id + 1, which for right-padded batches is
a BERT whose position table starts that many rows later. Anything else (DistilBERT's names, DeBERTa's
attention) is refused with the model type named, rather than half-copied.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

from atb.fsutil import files_sha256

BERT_FAMILY = ("bert", "atb_tinybert")
ROBERTA_FAMILY = ("roberta", "xlm-roberta")
CONVERTED_FROM = "atb_converted_from"  # the config key that marks a RoBERTa-family config read as BERT
# RoBERTa's parameter names -> BERT's, applied in order to each name
ROBERTA_NAMES = (("roberta.", "bert."), ("lm_head.dense.", "cls.predictions.transform.dense."),
                 ("lm_head.layer_norm.", "cls.predictions.transform.LayerNorm."),
                 ("lm_head.decoder.", "cls.predictions.decoder."), ("lm_head.bias", "cls.predictions.bias"))
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a statistic over ranks (the identity on one rank)


@dataclass(frozen=True)
class SourceDims:
    """The shape of a BERT-family model, read from its config."""

    layers: int
    hidden: int
    heads: int
    qkv: int
    ffn: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.qkv // self.heads


def _raw_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (expected a transformers model folder)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def _position_offset(config: dict[str, Any]) -> int:
    """Rows of a RoBERTa position table before the first real token's: the padding id's and those below it."""
    pad = config.get("pad_token_id")
    return (1 if pad is None else int(pad)) + 1  # transformers' RoBERTa pads with 1 unless told otherwise


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's config as BERT's (a RoBERTa-family one converted, and marked with CONVERTED_FROM)."""
    folder = Path(folder)
    config = _raw_config(folder)
    model_type = config.get("model_type")
    if model_type in ROBERTA_FAMILY:
        offset = _position_offset(config)
        config = {**config, "model_type": "bert", CONVERTED_FROM: model_type, "pad_token_id": offset - 1,
                  "max_position_embeddings": int(config["max_position_embeddings"]) - offset}
    elif model_type not in BERT_FAMILY:
        raise ValueError(f"{folder}: model_type {model_type!r} is not BERT-family; atb compresses "
                         f"{list(BERT_FAMILY + ROBERTA_FAMILY)} folders (the blocks of transformers' BERT)")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{folder}: only gelu activations and absolute positions are supported, got "
                         f"{config.get('hidden_act')!r} / {config.get('position_embedding_type')!r}")
    return config


def declared_pooling(folder: str | Path) -> str:
    """How the folder's encoder turns tokens into one sentence vector: `mean` when it is a
    sentence-transformers model with mean pooling (modules.json → its Pooling module's config), or an atb
    export that says so; else `cls` (BERT's pooler over [CLS])."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if config.get("classifier_pooling") in ("cls", "mean"):
        return config["classifier_pooling"]
    modules = folder / "modules.json"
    try:
        entries = json.loads(modules.read_text()) if modules.is_file() else []
        pooling = next((m for m in entries if str(m.get("type", "")).endswith(".Pooling")), None)
        settings = json.loads((folder / pooling["path"] / "config.json").read_text()) if pooling else {}
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as err:
        raise ValueError(f"{modules}: cannot read the sentence-transformers pooling ({err})") from None
    return "mean" if settings.get("pooling_mode_mean_tokens") else "cls"


def source_dims(config: dict[str, Any]) -> SourceDims:
    hidden = int(config["hidden_size"])
    return SourceDims(layers=int(config["num_hidden_layers"]), hidden=hidden,
                      heads=int(config["num_attention_heads"]), qkv=int(config.get("qkv_size") or hidden),
                      ffn=int(config["intermediate_size"]), vocab_size=int(config["vocab_size"]),
                      max_positions=int(config.get("max_position_embeddings", 512)),
                      type_vocab_size=int(config.get("type_vocab_size", 2)))


def embedding_settings(config: dict[str, Any]) -> dict[str, Any]:
    """What a SuperBert must share with the source besides its dims to compute the source's function (the
    LayerNorm epsilon) and to export models that tokenizers and fine-tuning treat as the source (token types,
    the padding row)."""
    return {"type_vocab_size": int(config.get("type_vocab_size", 2)),
            "pad_token_id": int(config.get("pad_token_id") or 0),
            "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12))}


def weights_file(folder: str | Path) -> Path:
    for name in WEIGHT_FILES:
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}")


def content_hash(folder: str | Path) -> str:
    """sha256 over the config and the weights: what importance scores and orders were computed from."""
    return files_sha256([Path(folder) / "config.json", weights_file(folder)], with_names=True)


def load_state(folder: str | Path, normalise: bool = True) -> dict[str, torch.Tensor]:
    """The folder's weights; with `normalise`, under BertForMaskedLM names (`bert.` prefix) whatever head
    it was saved with. A RoBERTa-family folder's are always converted: its own names mean nothing to atb."""
    path = weights_file(folder)
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch raise several types for a damaged file
        raise ValueError(f"{path} cannot be read as weights ({type(err).__name__}: {err})") from None
    config_path = Path(folder) / "config.json"  # a SuperPLM folder has weights but no transformers config
    config = _raw_config(Path(folder)) if config_path.is_file() else {}
    roberta = config.get("model_type") in ROBERTA_FAMILY
    if not normalise and not roberta:
        return state
    state = {("bert." + k if k.startswith(("embeddings.", "encoder.", "pooler.")) else k): v for k, v in state.items()}
    return _roberta_as_bert(state, _position_offset(config)) if roberta else state


def _roberta_as_bert(state: dict[str, torch.Tensor], position_offset: int) -> dict[str, torch.Tensor]:
    """A RoBERTa-family state dict (a bare encoder's names already `bert.`-prefixed) under BertForMaskedLM
    names, its position table starting at the first real token's row (BERT counts positions from 0)."""
    converted = {}
    for name, tensor in state.items():
        # position_ids: a buffer transformers rebuilds; classifier: RoBERTa's task head (dense + out_proj over
        # <s>), which no compression objective uses
        if name.endswith("position_ids") or name.startswith("classifier."):
            continue
        for old, new in ROBERTA_NAMES:
            name = name.replace(old, new, 1) if name.startswith(old) else name
        if name == "bert.embeddings.position_embeddings.weight":
            tensor = tensor[position_offset:]
        converted[name] = tensor
    return converted


def has_pooler(folder: str | Path) -> bool:
    """Whether the folder's weights hold BERT's [CLS] pooler."""
    return "bert.pooler.dense.weight" in load_state(folder)


def build_model(folder: str | Path, config: dict[str, Any], with_mlm_head: bool = False) -> torch.nn.Module:
    """The folder as an eval-mode transformers model (encoder, or MaskedLM when asked), without remote code."""
    if config["model_type"] == "bert":
        from transformers import BertForMaskedLM, BertModel

        cls = BertForMaskedLM if with_mlm_head else BertModel
    else:
        from atb.model.tiny import TinyBertForMaskedLM, TinyBertModel

        cls = TinyBertForMaskedLM if with_mlm_head else TinyBertModel
    if CONVERTED_FROM in config:
        return _converted_model(cls, folder, config)
    return cls.from_pretrained(str(folder)).eval()


def _converted_model(cls: type, folder: str | Path, config: dict[str, Any]) -> torch.nn.Module:
    """A BERT model holding a RoBERTa-family folder's weights (there is no BERT folder to load it from)."""
    from transformers import BertConfig

    model = cls(BertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "auto_map")}))
    state = load_state(folder)
    if not hasattr(model, "bert"):  # a bare encoder: no prefix, no MLM head
        state = {k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.")}
    missing = [k for k in model.load_state_dict(state, strict=False).missing_keys
               if not k.startswith(("pooler.", "bert.pooler.", "cls.predictions.decoder."))]
    if missing:
        raise ValueError(f"{folder}: the {config[CONVERTED_FROM]} weights lack {missing[:3]} "
                         f"({len(missing)} tensors); is the folder complete?")
    model.tie_weights()
    return model.eval()


def encoder_model(model: torch.nn.Module) -> torch.nn.Module:
    """The BERT body (embeddings, encoder) of a model with or without a task or MLM head."""
    return getattr(model, "bert", model)


def run_calibration(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], hooks: list,
                    real: dict[str, torch.Tensor]) -> torch.Tensor:
    """Runs `model` in eval mode over `batches` with the forward `hooks` in place (removed afterwards),
    keeping `real["mask"]` at the current batch's real tokens for them; returns how many real tokens it saw."""
    tokens = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    model.eval()
    try:
        for batch in batches:
            real["mask"] = batch["attention_mask"].bool()
            tokens += real["mask"].sum()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  token_type_ids=batch["token_type_ids"])
    finally:
        for hook in hooks:
            hook.remove()
    return tokens


def has_mlm_head(folder: str | Path) -> bool:
    return any(k.startswith("cls.predictions.transform.") for k in load_state(folder))

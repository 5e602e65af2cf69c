"""An exported folder -> `model.onnx` (and `model.int8.onnx`) beside its `model.safetensors`.

The graph comes from torch's maintained exporter (`torch.onnx.export(dynamo=True)`, i.e. torch.export +
onnxscript), with batch and sequence as dynamic axes, so one file serves every input shape. The int8 file
is onnxruntime's dynamic quantization (int8 weights with a scale per output channel, activations quantized
per call), the usual way CPU servers run BERTs. `atb_arch.json` records both files with the opset and a hash
of the weights they came from; `onnx_file` refuses a file whose weights have changed since (a stale export
would be timed, and served, as if it were the model).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atb.deploy.runtime import ORT_FP32, ORT_INT8, check_runtime, require
from atb.fsutil import files_sha256, read_json, write_json_atomic

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
ARCH_JSON = "atb_arch.json"  # the same file atb.model.extract writes
DEFAULT_OPSET = 18
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
HEADS = {"encoder": ("last_hidden_state",), "classifier": ("logits",), "qa": ("start_logits", "end_logits")}
EXPORT_COMMAND = "tools/export_onnx.py --folder {folder}"


class OnnxSignature(nn.Module):
    """The served signature: three int64 [batch, seq] inputs in, the head's tensors out (no ModelOutput)."""

    def __init__(self, model: nn.Module, head: str):
        super().__init__()
        self.model, self.outputs = model, HEADS[head]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(out[name] for name in self.outputs)


def head_of(config: Any) -> str:
    """The head a folder's model serves, from the class transformers saved it as."""
    names = getattr(config, "architectures", None) or []
    if any(n.endswith("ForSequenceClassification") for n in names):
        return "classifier"
    if any(n.endswith("ForQuestionAnswering") for n in names):
        return "qa"
    return "encoder"  # MaskedLM exports and bare encoders: the MLM head is not part of a served model


def load_served_model(folder: str | Path, head: str = "auto") -> tuple[nn.Module, str]:
    """The folder's model as it is served (eval mode), with atb's own TinyBert classes, not remote code."""
    from transformers import AutoConfig, AutoModel, AutoModelForQuestionAnswering, AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    from atb.model import tiny

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an exported model folder (no config.json)")
    if _model_type(folder) == tiny.TinyBertConfig.model_type:  # atb's own classes, never the folder's code
        config = tiny.TinyBertConfig.from_pretrained(str(folder))
    else:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    head = head_of(config) if head == "auto" else head
    if head not in HEADS:
        raise ValueError(f"head must be 'auto' or one of {', '.join(HEADS)}, got {head!r}")
    if isinstance(config, tiny.TinyBertConfig):
        classes = {"encoder": tiny.TinyBertModel, "classifier": tiny.TinyBertForSequenceClassification,
                   "qa": tiny.TinyBertForQuestionAnswering}
    else:
        classes = {"encoder": AutoModel, "classifier": AutoModelForSequenceClassification,
                   "qa": AutoModelForQuestionAnswering}
    extra = {"add_pooling_layer": False} if head == "encoder" else {}
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # an encoder read from an MLM folder leaves the MLM head unused
    try:
        model = classes[head].from_pretrained(str(folder), config=config, **extra)
    finally:
        transformers_logging.set_verbosity(verbosity)
    return model.eval(), head


def _model_type(folder: Path) -> str | None:
    return read_json(folder / "config.json", "model config").get("model_type")


def example_inputs(batch: int = 2, seq: int = 8, vocab: int = 100) -> tuple[torch.Tensor, ...]:
    """A padded batch: the traced graph must take the masked path, which every input can then use."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, seq // 2:] = 0
    return ids, mask, torch.zeros_like(ids)


def export_module(model: nn.Module, head: str, path: str | Path, opset: int = DEFAULT_OPSET,
                  max_positions: int = 512, vocab: int = 100) -> Path:
    """Write `model` (a served model of `head`) as one ONNX file with dynamic batch and sequence axes."""
    require("onnx")
    require("onnxscript")
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1, max=max_positions)
    dims = {name: {0: batch, 1: seq} for name in INPUTS}
    try:
        with warnings.catch_warnings():  # the exporter's deprecation and axis-renaming chatter, not ours
            warnings.simplefilter("ignore")
            torch.onnx.export(OnnxSignature(model, head).eval(), example_inputs(vocab=vocab), str(path),
                              input_names=list(INPUTS), output_names=list(HEADS[head]), dynamic_shapes=dims,
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
    except Exception as err:  # the exporter raises many types; its own message is the reason
        raise ValueError(f"ONNX export of the {head} model failed: {_reason(err)}") from err
    return Path(path)


def _reason(err: Exception) -> str:
    text = str(err)
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def quantize_int8(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """onnxruntime's dynamic int8 quantization of `src` into `dst`; returns what was done.

    Weights get one scale per output channel: a BERT's channels differ widely in range, and with one scale per
    matrix the widest sets the step for all of them, which costs accuracy that the small latency saving does
    not repay (bench/RESULTS.md).
    """
    ort = require("onnxruntime")
    quantization = require("onnxruntime.quantization")
    quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8, per_channel=True)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8", "per_channel": True,
            "onnxruntime": ort.__version__}


def weights_hash(folder: str | Path) -> str:
    """sha256 over the folder's safetensors files (sharded or not), the identity of its weights."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    return files_sha256(files)


def export_folder(folder: str | Path, head: str = "auto", int8: bool = True, opset: int = DEFAULT_OPSET,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write model.onnx (and model.int8.onnx) into `folder` and record them; on failure nothing changes."""
    folder = Path(folder)
    targets = [folder / ONNX_FILE] + ([folder / INT8_FILE] if int8 else [])
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds {', '.join(existing)}; pass --overwrite to re-export")
    model, head = load_served_model(folder, head)
    config = model.config
    record: dict[str, Any] = {
        "head": head, "inputs": list(INPUTS), "outputs": list(HEADS[head]), "dynamic_axes": ["batch", "seq"],
        "opset": opset, "exporter": "torch.onnx.export(dynamo=True)", "torch": torch.__version__,
        "onnx": require("onnx").__version__, "weights_sha256": weights_hash(folder),
        "fp32": ONNX_FILE, "int8": None,
    }
    staging = Path(tempfile.mkdtemp(prefix=".onnx.", suffix=".tmp", dir=folder))
    try:
        export_module(model, head, staging / ONNX_FILE, opset, config.max_position_embeddings, config.vocab_size)
        if int8:
            record["int8"] = INT8_FILE
            record["quantization"] = quantize_int8(staging / ONNX_FILE, staging / INT8_FILE)
        for path in targets:
            os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    arch_json = folder / ARCH_JSON
    meta = read_json(arch_json, "arch record") if arch_json.is_file() else {}
    write_json_atomic(arch_json, {**meta, "onnx": record})
    return record


def onnx_file(folder: str | Path, runtime: str = ORT_FP32) -> Path:
    """The ONNX file of `folder` for an ORT runtime, checked to come from the folder's current weights."""
    folder = Path(folder)
    if check_runtime(runtime) not in (ORT_FP32, ORT_INT8):
        raise ValueError(f"runtime {runtime!r} has no ONNX file")
    arch_json = folder / ARCH_JSON
    record = read_json(arch_json, "arch record").get("onnx") if arch_json.is_file() else None
    name = (record or {}).get("int8" if runtime == ORT_INT8 else "fp32")
    hint = EXPORT_COMMAND.format(folder=folder) + (" --int8 true" if runtime == ORT_INT8 else "")
    if not name or not (folder / name).is_file():
        raise FileNotFoundError(f"{folder} has no {'int8 ' if runtime == ORT_INT8 else ''}ONNX export "
                                f"recorded in {ARCH_JSON}; create it with `{hint}`")
    if record["weights_sha256"] != weights_hash(folder):
        raise ValueError(f"{folder / name} is stale: it was exported from other weights than the folder's "
                         f"model.safetensors; re-export with `{hint} --overwrite true`")
    return folder / name

"""Export a model folder to ONNX beside its weights: model.onnx (fp32) and, optionally, model.int8.onnx.

    python tools/export_onnx.py --folder runs/develop/models/L4_H256_A4_Q256_F1024
    python tools/export_onnx.py --folder runs/finetune/sst2/model --int8 true --overwrite true

Works on any folder atb writes (extract, develop, finetune): vanilla `bert` or atb's TinyBert, with the
plain encoder, sequence-classification or QA head. Batch and sequence are dynamic axes; atb_arch.json
records the files, the opset and a hash of the weights. Needs the onnx extra: pip install 'atb[onnx]'.
"""

from __future__ import annotations

from dataclasses import dataclass

from atb.cli import run_cli


@dataclass
class ExportOnnxConfig:
    """Write model.onnx (and model.int8.onnx) into an exported model folder."""

    folder: str = ""  # a folder with config.json + model.safetensors
    head: str = "auto"  # auto (from the saved model class), encoder, classifier or qa
    int8: bool = False  # also write model.int8.onnx (onnxruntime dynamic int8 quantization)
    opset: int = 18
    overwrite: bool = False  # replace ONNX files already in the folder


def run(cfg: ExportOnnxConfig) -> None:
    from atb.deploy.onnx_export import export_folder

    if not cfg.folder:
        raise ValueError("--folder is required")
    record = export_folder(cfg.folder, head=cfg.head, int8=cfg.int8, opset=cfg.opset, overwrite=cfg.overwrite)
    files = ", ".join(f for f in (record["fp32"], record["int8"]) if f)
    print(f"exported the {record['head']} model of {cfg.folder} to {files} (opset {record['opset']})")


if __name__ == "__main__":
    run_cli(ExportOnnxConfig, run, prog="export_onnx")

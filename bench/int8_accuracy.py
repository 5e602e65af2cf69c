"""What deployment costs in accuracy: a fine-tuned classifier's dev accuracy in PyTorch fp32, ONNX Runtime fp32
and ONNX Runtime int8 (dynamic quantization, atb's per-channel weight scales and, for comparison, one scale
per matrix), on the same rows, from one export.

    .venv/bin/python bench/int8_accuracy.py --model runs/demo/finetune/movie_sentiment/<arch>/model

The folder is copied first: the export is written into the copy, never into the fine-tuned model.
Last line: BENCH int8_accuracy ratio=<int8 accuracy / PyTorch fp32 accuracy> (goal: a drop of <= 1 point).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atb.deploy.onnx_export import INPUTS, export_folder, load_served_model, onnx_file  # noqa: E402
from atb.deploy.ort_predict import ort_predictor  # noqa: E402
from atb.deploy.runtime import ORT_FP32, ORT_INT8  # noqa: E402
from atb.finetune import FinetuneConfig, classification  # noqa: E402
from atb.finetune.tasks import load_task  # noqa: E402


def torch_logits(folder: Path, features, tokenizer, batch: int) -> np.ndarray:
    """The fine-tuned model's logits in PyTorch fp32, batched and padded as the ONNX predictor does."""
    model, _ = load_served_model(folder, "classifier")
    inputs = [c for c in INPUTS if c in features.column_names]
    logits = []
    for start in range(0, len(features), batch):
        padded = tokenizer.pad({c: features[start:start + batch][c] for c in inputs}, return_tensors="pt")
        with torch.inference_mode():
            logits.append(model(**padded).logits.numpy())
    return np.concatenate(logits)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a fine-tuned classification folder")
    parser.add_argument("--task", default="movie_sentiment")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--max_seq_len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    task = load_task(FinetuneConfig(model=args.model, task=args.task, out_dir="unused"))
    examples = task.splits[args.split]
    labels = np.asarray(examples["label"])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(args.model, folder)
        export_folder(folder, head="classifier", int8=True, overwrite=True)
        # atb's int8 has a weight scale per output channel; one scale per matrix is scored beside it
        per_tensor = folder / "model.per_tensor.int8.onnx"
        quantize_dynamic(str(onnx_file(folder, ORT_FP32)), str(per_tensor), weight_type=QuantType.QInt8)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
        features = classification.encode(examples, tokenizer, args.max_seq_len)
        predictions = {"torch fp32": torch_logits(folder, features, tokenizer, args.batch).argmax(-1)}
        files = {ORT_FP32: onnx_file(folder, ORT_FP32), ORT_INT8: onnx_file(folder, ORT_INT8),
                 "int8 per-tensor": per_tensor}
        for name, path in files.items():
            predict = ort_predictor(path, tokenizer, args.batch, torch.get_num_threads())
            predictions[name] = predict(features)[0].argmax(-1)
    accuracy = {name: float((p == labels).mean()) for name, p in predictions.items()}
    agree = float((predictions[ORT_INT8] == predictions["torch fp32"]).mean())
    print(f"{args.task} {args.split} ({len(labels)} rows), {Path(args.model).parent.name}:")
    for name, acc in accuracy.items():
        print(f"  {name:<20} accuracy {acc:.4f}")
    print(f"  int8 predictions equal to torch fp32's on {agree:.1%} of rows; drop "
          f"{100 * (accuracy['torch fp32'] - accuracy[ORT_INT8]):.2f} points (goal <= 1; one scale per matrix: "
          f"{100 * (accuracy['torch fp32'] - accuracy['int8 per-tensor']):.2f})")
    print(f"BENCH int8_accuracy ratio={accuracy[ORT_INT8] / accuracy['torch fp32']:.4f}")


if __name__ == "__main__":
    main()

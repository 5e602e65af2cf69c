"""What deployment costs in accuracy: a fine-tuned classifier's dev accuracy in PyTorch fp32, ONNX Runtime fp32
and ONNX Runtime int8 (dynamic quantization), on the same rows, from one export.

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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atb.deploy.onnx_export import INPUTS, export_folder, load_served_model, onnx_file  # noqa: E402
from atb.deploy.runtime import ORT_FP32, ORT_INT8, open_session  # noqa: E402
from atb.finetune import FinetuneConfig  # noqa: E402
from atb.finetune.tasks import load_task  # noqa: E402


def batches(texts: list[str], tokenizer, size: int, max_len: int):
    for i in range(0, len(texts), size):
        enc = tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=max_len, return_tensors="np")
        yield {name: enc[name].astype(np.int64) for name in INPUTS}


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
    rows = task.splits[args.split]
    texts, labels = list(rows["text_a"]), np.asarray(rows["label"])  # single-sentence tasks
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        shutil.copytree(args.model, folder)
        export_folder(folder, head="classifier", int8=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model, _ = load_served_model(folder, "classifier")
        sessions = {runtime: open_session(onnx_file(folder, runtime), threads=torch.get_num_threads())[0]
                    for runtime in (ORT_FP32, ORT_INT8)}
        predictions: dict[str, list[np.ndarray]] = {"torch fp32": [], ORT_FP32: [], ORT_INT8: []}
        for feed in batches(texts, tokenizer, args.batch, args.max_seq_len):
            with torch.inference_mode():
                logits = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits
            predictions["torch fp32"].append(logits.argmax(-1).numpy())
            for runtime, session in sessions.items():
                predictions[runtime].append(session.run(["logits"], feed)[0].argmax(-1))
    accuracy = {name: float((np.concatenate(p) == labels).mean()) for name, p in predictions.items()}
    agree = float((np.concatenate(predictions[ORT_INT8]) == np.concatenate(predictions["torch fp32"])).mean())
    print(f"{args.task} {args.split} ({len(labels)} rows), {Path(args.model).parent.name}:")
    for name, acc in accuracy.items():
        print(f"  {name:<20} accuracy {acc:.4f}")
    print(f"  int8 predictions equal to torch fp32's on {agree:.1%} of rows; drop "
          f"{100 * (accuracy['torch fp32'] - accuracy[ORT_INT8]):.2f} points (goal <= 1)")
    print(f"BENCH int8_accuracy ratio={accuracy[ORT_INT8] / accuracy['torch fp32']:.4f}")


if __name__ == "__main__":
    main()

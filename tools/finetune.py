"""Fine-tune an exported model folder on a GLUE-style or SQuAD v1.1 task and report dev metrics.

    python tools/finetune.py --model models/a --task movie_sentiment --out_dir runs/ft/a
    python tools/finetune.py --model models/a --task data/mrpc --out_dir runs/ft/mrpc        # GLUE TSVs
    python tools/finetune.py --model models/a --task data/squad --max_seq_len 384 --doc_stride 128 \
        --out_dir runs/ft/squad                                    # train-v1.1.json / dev-v1.1.json
    python tools/finetune.py --model models/a --task movie_sentiment --seeds 0,1,2 --out_dir runs/ft/a3
                                                 # one run per seed, and their mean and spread
    python tools/finetune.py --model models/a --task movie_sentiment --deploy onnxruntime-int8 --out_dir runs/ft/a8
                                                 # also model/model.int8.onnx, and its scores as deployed
    python tools/finetune.py --model models/a --task movie_sentiment --teacher runs/ft/source/model --out_dir runs/ft/ak
                                                 # also learn from the source as fine-tuned on this task
    deepspeed --num_gpus 8 tools/finetune.py --ds_config zero2_bf16 --model models/a --task ... --out_dir ...

Writes <out_dir>/metrics.json (dev metrics, majority-class baseline, sizes, timings, config) and
<out_dir>/model (the fine-tuned model, safetensors, loadable with transformers + trust_remote_code); with
--seeds, one such folder per seed (<out_dir>/seed_<n>) and a metrics.json with the mean (dev) and the
standard deviation (dev_std) over seeds. One seed moves a small model's accuracy by a point or more: compare
models on the mean.
"""

from __future__ import annotations

import json
import os

from atb.cli import run_cli
from atb.finetune import FinetuneConfig, finetune


def run(cfg: FinetuneConfig) -> None:
    record = finetune(cfg)
    if os.environ.get("RANK", "0") != "0":  # every rank ran; the main one reports (and alone knows "deployed")
        return
    summary = {split: record[split] for split in ("dev", "dev_std", "test", "test_std") if split in record}
    for key in ("majority_baseline", "deployed"):
        if key in record:
            summary[key] = record[key]
    print(json.dumps(summary, indent=2))
    print(f"fine-tuned {record['task']} ({record['task_type']}) -> {cfg.out_dir}")


if __name__ == "__main__":
    run_cli(FinetuneConfig, run, prog="finetune")

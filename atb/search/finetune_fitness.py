"""The task-level fitness of the search: a sub-network's dev score after a short fine-tune (atb.finetune)
on a task folder (the paper's fitness is fine-tuned SQuAD/MNLI scores). Much slower than the dev loss,
closer to what the exported model is used for. A fine-tune is seeded the same for every arch, so scores do
not depend on the rank or the order of evaluation.

    python -m atb.search.finetune_fitness '<job JSON>'   # the child process of one evaluation
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from atb.finetune import FinetuneConfig, finetune
from atb.model.extract import extract
from atb.model.supernet_io import is_supernet_folder, load_supernet
from atb.space import Arch

FINETUNE_METRIC = {"classification": "accuracy", "regression": "pearson", "qa": "f1"}
# launcher variables that would make the fine-tune's Trainer join the search's process group
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")


def finetune_job(job: dict[str, Any]) -> None:
    """In the child process: export the sub-network from the SuperPLM folder, then fine-tune it."""
    model, _ = load_supernet(job["supernet"])
    extract(model, Arch.parse(job["arch"]), job["export"], tokenizer=job["tokenizer"])
    finetune(FinetuneConfig(**job["finetune"], model=job["export"]))


class QuickFinetuneFitness:
    """Dev score of the sub-network after a short fine-tune with atb.finetune (accuracy for classification,
    Pearson for regression, F1 for QA); higher is better. A ranking proxy: few samples, few epochs.

    Export and fine-tune run in a child process without the launcher's variables: inside the search's
    process group, transformers writes a model folder only on rank 0 and the Trainer would all-reduce the
    gradients of different candidates across ranks.
    """

    higher_is_better = True

    def __init__(self, supernet: str | Path, tokenizer: str | Path, task: str, work_dir: str | Path,
                 epochs: float = 1.0, max_train_samples: int = 2000, max_eval_samples: int = 500, lr: float = 1e-4,
                 batch_size: int = 32, max_seq_len: int = 128, seed: int = 0, device_index: int | None = None,
                 timeout_s: int = 3600, space: Any = None):
        if not is_supernet_folder(Path(supernet)):
            raise FileNotFoundError(f"{supernet} is not a SuperPLM folder (the fine-tune fitness exports from one)")
        self.supernet = str(supernet)
        self.space = space
        self.tokenizer = str(tokenizer)
        self.task = str(task)
        self.work_dir = Path(work_dir)
        self.name = f"finetune_{Path(self.task).name}"
        self.settings = {"task": self.task, "epochs": epochs, "max_train_samples": max_train_samples,
                         "max_eval_samples": max_eval_samples, "lr": lr, "batch_size": batch_size,
                         "max_seq_len": max_seq_len, "seed": seed, "logging_steps": 10**6}
        self.device_index = device_index
        self.timeout_s = timeout_s

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and not k.startswith("TORCHELASTIC")}
        if self.device_index is not None:  # this rank's GPU only
            env["CUDA_VISIBLE_DEVICES"] = str(self.device_index)
        return env

    def __call__(self, arch: Arch) -> float:
        if self.space is not None:
            self.space.validate(arch)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{arch.name}.", dir=self.work_dir) as tmp:
            job = {"supernet": self.supernet, "arch": arch.name, "tokenizer": self.tokenizer,
                   "export": str(Path(tmp) / "model"),
                   "finetune": {**self.settings, "out_dir": str(Path(tmp) / "finetune")}}
            proc = subprocess.run([sys.executable, "-m", __name__, json.dumps(job)], capture_output=True, text=True,
                                  env=self._child_env(), timeout=self.timeout_s, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"fine-tuning {arch.name} failed:\n{proc.stderr[-2000:]}")
            record = json.loads((Path(tmp) / "finetune" / "metrics.json").read_text())
        return float(record["dev"][FINETUNE_METRIC[record["task_type"]]])


if __name__ == "__main__":
    finetune_job(json.loads(sys.argv[1]))

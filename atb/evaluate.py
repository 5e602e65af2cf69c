"""Proxy scores of sub-networks, with weights inherited from a SuperPLM: the fitness of the search.

- `DevLossFitness` (default): MLM loss, or the KD loss against a teacher, on held-out dev blocks of the
  pre-training corpus. Cheap (forward passes only) and what the SuperPLM was trained to minimise.
- `QuickFinetuneFitness`: dev score after a short fine-tune (atb.finetune) on a task folder (the paper's
  fitness is fine-tuned SQuAD/MNLI scores). Much slower, closer to what the exported model is used for.

Every score is a pure function of (weights, arch, data, seed): evaluation runs in eval mode under
inference_mode on a fixed list of batches (a fine-tune is seeded the same for every arch), so the rank
that evaluates a candidate, and the order of evaluation, cannot change its score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from atb.model.elastic import SuperBert
from atb.space import Arch

Batch = dict[str, torch.Tensor]


class DevLossFitness:
    """Mean loss per labelled token (MLM) or per batch (KD) over fixed dev batches; lower is better."""

    higher_is_better = False

    def __init__(self, model: SuperBert, batches: list[Batch], device: torch.device | str = "cpu",
                 objective: str = "mlm", teacher: Any = None, projection: Any = None):
        if not batches:
            raise ValueError("no dev batches to evaluate on: the dev split is empty (raise --dev_fraction or use a "
                             "larger corpus)")
        if objective not in ("mlm", "kd"):
            raise ValueError(f"--fitness objective must be mlm or kd, got {objective!r}")
        if objective == "kd" and teacher is None:
            raise ValueError("KD fitness needs a teacher (--teacher, a transformers encoder folder)")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batches = [{k: v.to(self.device) for k, v in b.items()} for b in batches]
        self.objective = objective
        self.name = f"{objective}_dev_loss"
        self.projection = projection.to(self.device).eval() if projection is not None else None
        self.teacher_outputs = None
        if objective == "kd":
            with torch.inference_mode():  # the teacher is the same for every candidate: run it once
                self.teacher_outputs = [teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                                        for b in self.batches]

    @torch.inference_mode()
    def __call__(self, arch: Arch) -> float:
        self.model.space.validate(arch)
        if self.objective == "kd":
            return self._kd_loss(arch)
        total, tokens = 0.0, 0
        for b in self.batches:
            n = int((b["labels"] != -100).sum())
            if n == 0:
                continue
            out = self.model(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch=arch, labels=b["labels"])
            total += float(out.loss) * n
            tokens += n
        if tokens == 0:
            raise ValueError("the dev batches hold no masked tokens to score")
        return total / tokens

    def _kd_loss(self, arch: Arch) -> float:
        from atb.train.objectives import attention_score_mse, kd_losses

        total = 0.0
        for b, t_out in zip(self.batches, self.teacher_outputs):
            hidden, scores = self.model.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch,
                                               want_scores=True)
            if self.projection is None:  # no trained projection: the attention term alone
                total += float(attention_score_mse(scores, t_out.scores, b["attention_mask"]))
            else:
                mapped = self.projection(hidden, self.projection.weight.shape[0], arch.hidden)
                parts = kd_losses(scores, mapped, t_out, b["attention_mask"])
                total += float(sum(parts.values()))
        return total / len(self.batches)


KD_PROJECTION_FILE = "kd_projection.safetensors"


def save_kd_projection(checkpoint: str | Path, folder: str | Path, trust_checkpoint: bool = False) -> bool:
    """Copy the KD projection of a DeepSpeed checkpoint next to its consolidated SuperPLM folder."""
    from safetensors.torch import save_file

    from atb.train.consolidate import consolidated_extras

    state = {k.split("kd_projection.", 1)[1]: v.float().contiguous()
             for k, v in consolidated_extras(checkpoint, trust_checkpoint).items() if k.startswith("kd_projection.")}
    if state:
        save_file(state, str(Path(folder) / KD_PROJECTION_FILE))
    return bool(state)


def load_kd_projection(folder: str | Path):
    """The KD projection trained with the SuperPLM (saved beside the SuperPLM folder), or None."""
    from safetensors.torch import load_file

    from atb.model.elastic import ElasticLinear

    file = Path(folder) / KD_PROJECTION_FILE
    if not file.is_file():
        return None
    state = load_file(str(file))
    weight = state["weight"]
    projection = ElasticLinear(weight.shape[1], weight.shape[0], bias="bias" in state)
    projection.load_state_dict(state)
    return projection


def load_dev_batches(corpus: str, tokenizer: Any, seq_len: int, dev_fraction: float, data_seed: int,
                     batch_size: int, max_batches: int, cache_dir: str | None) -> list[Batch]:
    """The corpus's held-out dev blocks, masked deterministically (same blocks and masks on every rank and
    in every run), capped at `max_batches` (0 = all)."""
    from atb.data import build_blocks, dev_batches, load_corpus

    sources = [c for c in corpus.split(",") if c] if "," in corpus else corpus
    blocks = build_blocks(load_corpus(sources), tokenizer, seq_len, dev_fraction=dev_fraction, seed=data_seed,
                          num_proc=1, cache_dir=cache_dir)
    batches = list(dev_batches(blocks["dev"], tokenizer, batch_size, data_seed))
    return batches[:max_batches] if max_batches > 0 else batches


BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def save_dev_batches(batches: list[Batch], path: str | Path) -> Path:
    """A fixed, already-masked dev set in one safetensors file: scores stay comparable across searches
    even if the data pipeline (tokenizer, masking) changes later."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{i:06d}.{k}": b[k].contiguous() for i, b in enumerate(batches) for k in BATCH_KEYS}, str(path))
    return path


def read_dev_batches(path: str | Path, max_batches: int = 0) -> list[Batch]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dev data file not found: {path}")
    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"dev data file {path} is not a readable safetensors file: {err}") from None
    batches: dict[str, Batch] = {}
    for key, tensor in flat.items():
        index, _, name = key.partition(".")
        batches.setdefault(index, {})[name] = tensor
    out = [batches[i] for i in sorted(batches)]
    for i, b in enumerate(out):
        if set(b) != set(BATCH_KEYS):
            raise ValueError(f"dev data file {path}: batch {i} has {sorted(b)}, expected {list(BATCH_KEYS)}")
    return out[:max_batches] if max_batches > 0 else out


# ---- quick fine-tune ----------------------------------------------------------------------------
FINETUNE_METRIC = {"classification": "accuracy", "regression": "pearson", "qa": "f1"}
# launcher variables that would make the fine-tune's Trainer join the search's process group
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "CROSS_RANK", "CROSS_SIZE")
_CHILD = "import json, sys; from atb.evaluate import finetune_job; finetune_job(json.loads(sys.argv[1]))"


def finetune_job(job: dict[str, Any]) -> None:
    """In the child process: export the sub-network from the SuperPLM folder, then fine-tune it."""
    from atb.finetune import FinetuneConfig, finetune
    from atb.model.extract import extract
    from atb.model.supernet_io import load_supernet

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
        from atb.model.supernet_io import is_supernet_folder

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
        import os

        env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV and not k.startswith("TORCHELASTIC")}
        if self.device_index is not None:  # this rank's GPU only
            env["CUDA_VISIBLE_DEVICES"] = str(self.device_index)
        return env

    def __call__(self, arch: Arch) -> float:
        import json
        import subprocess
        import sys
        import tempfile

        if self.space is not None:
            self.space.validate(arch)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{arch.name}.", dir=self.work_dir) as tmp:
            job = {"supernet": self.supernet, "arch": arch.name, "tokenizer": self.tokenizer,
                   "export": str(Path(tmp) / "model"),
                   "finetune": {**self.settings, "out_dir": str(Path(tmp) / "finetune")}}
            proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(job)], capture_output=True, text=True,
                                  env=self._child_env(), timeout=self.timeout_s, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"fine-tuning {arch.name} failed:\n{proc.stderr[-2000:]}")
            record = json.loads((Path(tmp) / "finetune" / "metrics.json").read_text())
        return float(record["dev"][FINETUNE_METRIC[record["task_type"]]])

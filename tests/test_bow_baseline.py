"""The TF-IDF + logistic-regression baseline: the demo's bar, trained on the same rows as fine-tuning."""

from __future__ import annotations

import json

import pytest

from atb.finetune import FinetuneConfig, finetune
from launching import run_tool
from synthetic_tasks import write_mrpc_task, write_sst2_task


def test_bow_baseline_learns_a_word_level_task_on_the_same_rows(tmp_path):
    pytest.importorskip("sklearn")
    task = write_sst2_task(tmp_path / "sst2")
    cfg = FinetuneConfig(model="tfidf", task=str(task), out_dir=str(tmp_path / "out"), max_train_samples=120, seed=3)
    record = finetune(cfg)
    majority = record["majority_baseline"]["dev"]["accuracy"]
    assert record["dev"]["accuracy"] >= 0.9 > majority  # the label is one sentiment word: BoW must find it
    assert record["sizes"]["train_used"] == 120
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["dev"] == record["dev"]


def test_bow_baseline_reads_both_sentences_of_a_pair_task(tmp_path):
    pytest.importorskip("sklearn")
    task = write_mrpc_task(tmp_path / "mrpc")
    record = finetune(FinetuneConfig(model="tfidf", task=str(task), out_dir=str(tmp_path / "out")))
    assert record["dev"]["accuracy"] >= 0.85


def test_bow_baseline_from_the_cli_refuses_a_qa_task(tmp_path):
    squad = tmp_path / "squad"
    squad.mkdir()
    doc = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}]}]}]}
    for split in ("train", "dev"):
        (squad / f"{split}.json").write_text(json.dumps(doc))
    proc = run_tool("finetune", ["--model", "tfidf", "--task", squad, "--out_dir", tmp_path / "out"], check=False)
    assert proc.returncode == 2 and "classification baseline" in proc.stderr
    assert not (tmp_path / "out").exists()

"""The whole chain at micro size, as `make demo` runs it: importance + KD pre-training from all-MiniLM-L6-v2
-> latency -> search -> develop -> finetune (with the source and TF-IDF references) -> report, every artefact
present and loadable."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM

import pytest

from bert_sources import save_random_bert
from conftest import PYTHON, REPO
from launching import DIST_ENV
from synthetic_tasks import task_cfg

from atb.demo.pipeline import SIZES
from atb.finetune.tasks import load_task, subsample
from atb.model.bert_source import load_state


def small_source(folder):
    """A small random BERT with the demo's tokenizer: the chain in minutes rather than MiniLM's quarter hour."""
    import shutil

    from atb.data.tokenizer import demo_tokenizer_path

    save_random_bert(folder, layers=4, hidden=128, heads=4, ffn=512, vocab=30522)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy2(f"{demo_tokenizer_path()}/{name}", folder / name)
    return folder


@pytest.mark.parametrize("source", ["small", pytest.param("minilm", marks=[pytest.mark.slow, pytest.mark.timeout(1800)])])
def test_micro_demo_end_to_end(tmp_path, source):
    import os

    corpus = tmp_path / "corpus.txt"
    with gzip.open(REPO / "atb" / "resources" / "corpus" / "austen.txt.gz", "rt") as fh:
        corpus.write_text("".join(next(fh) for _ in range(300)))
    out = tmp_path / "demo"
    source_arg = str(small_source(tmp_path / "source")) if source == "small" else "minilm"
    demo = [PYTHON, str(REPO / "tools" / "demo.py"), "--size", "micro", "--out_dir", str(out), "--corpus", str(corpus),
            "--tasks", "movie_sentiment", "--source", source_arg]
    # the micro size's latency table is probe-normalised: its quiet-time cache stays in this test's folder
    env = {**os.environ, **DIST_ENV, "ATB_PROBE_CACHE": str(tmp_path / "probe_cache.json")}
    proc = subprocess.run(demo, capture_output=True, text=True, timeout=1500, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    from atb.latency import LatencyPredictor
    from atb.model.supernet_io import load_supernet

    supernet, meta = load_supernet(out / "pretrain" / "supernet")
    assert meta["step"] == 4 and meta["objective"] == "kd" and meta["reorder"] == "importance"
    shape = "L4_H128_A4_Q128_F512" if source == "small" else "L6_H384_A12_Q384_F1536"
    assert supernet.space.largest().name == shape  # the source's shape
    predictor = LatencyPredictor.load(out / "latency" / "predictor")
    assert predictor.predict([supernet.space.largest()])[0] > predictor.predict([supernet.space.smallest()])[0]
    results = json.loads((out / "search" / "results.json").read_text())
    assert [t["target"] for t in results["targets"]] == SIZES["micro"].targets.split(",")
    manifest = json.loads((out / "develop" / "manifest.json").read_text())["models"]
    assert len(manifest) >= 3
    if source == "small":  # a [CLS]-pooling source: its pooler passes through pre-training and development frozen
        pooler = load_state(out / "pretrain" / "source_ordered")["bert.pooler.dense.weight"]
        for row in manifest:
            hidden = row["arch"]["hidden"]
            assert torch.equal(load_state(row["path"])["bert.pooler.dense.weight"], pooler[:hidden, :hidden])
    ids = torch.randint(1000, 2000, (1, 16))
    for row in manifest:
        model = AutoModelForMaskedLM.from_pretrained(row["path"], trust_remote_code=True).eval()
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits).all()
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
        metrics = json.loads((out / "finetune" / "movie_sentiment" / row["arch_name"] / "metrics.json").read_text())
        assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0
        assert metrics["deployed"]["runtime"] == "onnxruntime-int8" and 0.0 <= metrics["deployed"]["dev"]["accuracy"] <= 1.0
        # each student learnt from the source as fine-tuned on the same task, also on rows it was not given labels of
        assert metrics["config"]["teacher"] == str(out / "finetune" / "movie_sentiment" / "source" / "model")
        assert metrics["sizes"]["unlabelled"] == 32 and metrics["sizes"]["train_used"] == 64
    config = metrics["config"]
    labelled = subsample(load_task(task_cfg("movie_sentiment")).splits["train"], config["max_train_samples"],
                         config["seed"])["text_a"]
    unlabelled = [json.loads(line)["sentence"] for line in Path(config["unlabelled_file"]).read_text().splitlines()]
    assert len(unlabelled) == 32 and not set(unlabelled) & set(labelled)
    # the students share one tokenizer and the same rows: the teacher scored them once for all
    assert len(list((out / "finetune" / "movie_sentiment" / "teacher_outputs").iterdir())) == 1
    report = (out / "report.md").read_text()
    assert all(row["arch_name"] in report for row in manifest)
    for reference in ("source", "tfidf"):
        metrics = json.loads((out / "finetune" / "movie_sentiment" / reference / "metrics.json").read_text())
        assert metrics["sizes"]["train_used"] == 64 and f"| {reference} |" in report
        assert metrics["config"].get("teacher") is None
    assert (out / "plots" / "pretrain_loss.png").is_file()
    deployed = json.loads((out / "deploy" / "latency.json").read_text())["ms"]
    assert set(deployed) == {row["arch_name"] for row in manifest} | {"source"}
    assert all(ms > 0 for ms in deployed.values())
    assert all((Path(row["path"]) / "model.int8.onnx").is_file() for row in manifest)
    assert "ORT int8" in report and "task distillation" in report
    # a second run reuses every stage
    again = subprocess.run(demo, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("reusing") == 6

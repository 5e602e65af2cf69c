"""The whole chain at micro size, as `make demo` runs it: pretrain -> latency -> search -> develop ->
finetune -> report, every artefact present and loadable."""

from __future__ import annotations

import gzip
import json
import subprocess

import torch
from transformers import AutoModelForMaskedLM

from conftest import PYTHON, REPO
from launching import DIST_ENV


def test_micro_demo_end_to_end(tmp_path):
    import os

    corpus = tmp_path / "corpus.txt"
    with gzip.open(REPO / "atb" / "resources" / "corpus" / "austen.txt.gz", "rt") as fh:
        corpus.write_text("".join(next(fh) for _ in range(300)))
    out = tmp_path / "demo"
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "demo.py"), "--size", "micro", "--out_dir", str(out),
                           "--corpus", str(corpus), "--tasks", "movie_sentiment"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **DIST_ENV}, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    from atb.latency import LatencyPredictor
    from atb.model.supernet_io import load_supernet

    supernet, meta = load_supernet(out / "pretrain" / "supernet")
    assert meta["step"] == 4
    predictor = LatencyPredictor.load(out / "latency" / "predictor")
    assert predictor.predict([supernet.space.largest()])[0] > predictor.predict([supernet.space.smallest()])[0]
    results = json.loads((out / "search" / "results.json").read_text())
    assert [t["target"] for t in results["targets"]] == ["1.5x", "2x", "3x"]
    manifest = json.loads((out / "develop" / "manifest.json").read_text())["models"]
    assert len(manifest) >= 3
    ids = torch.randint(1000, 2000, (1, 16))
    for row in manifest:
        model = AutoModelForMaskedLM.from_pretrained(row["path"], trust_remote_code=True).eval()
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits).all()
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
        metrics = json.loads((out / "finetune" / "movie_sentiment" / row["arch_name"] / "metrics.json").read_text())
        assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0
    report = (out / "report.md").read_text()
    assert all(row["arch_name"] in report for row in manifest)
    assert (out / "plots" / "pretrain_loss.png").is_file()
    # a second run reuses every stage
    again = subprocess.run([PYTHON, str(REPO / "tools" / "demo.py"), "--size", "micro", "--out_dir", str(out),
                            "--corpus", str(corpus), "--tasks", "movie_sentiment"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, **DIST_ENV}, cwd=REPO)
    assert again.returncode == 0 and again.stdout.count("reusing") == 5

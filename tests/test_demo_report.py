"""The demo report's comparison with the BERT-ratio baseline, on hand-made artefacts."""

from __future__ import annotations

import json

from atb.demo.baseline import bert_ratio_archs
from atb.demo.report import write_report
from atb.space import SearchSpace


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_bert_ratio_family_follows_bert_shape_rules():
    family = bert_ratio_archs(SearchSpace.load("demo"))
    assert family
    assert all(a.ffn == 4 * a.hidden and a.qkv == a.hidden and a.qkv // a.heads == 64 for a in family)


def test_report_compares_each_target_with_its_baseline(tmp_path):
    archs = {"L2_H128_A3_Q192_F512": (0.75, 0.99), "L2_H128_A2_Q128_F512": (0.70, 0.99),
             "L4_H128_A2_Q128_F512": (0.72, 0.98)}
    _write(tmp_path / "develop" / "manifest.json", {"models": [
        {"arch_name": name, "target": "t", "params": 4e6, "path": str(tmp_path / name)} for name in archs]})
    for name, (movie, spam) in archs.items():
        for task, acc in (("movie_sentiment", movie), ("sms_spam", spam)):
            _write(tmp_path / "finetune" / task / name / "metrics.json",
                   {"dev": {"accuracy": acc}, "majority_baseline": {"dev": {"accuracy": 0.5}}})
    _write(tmp_path / "develop_picks.json", {"pairs": {
        "4x": {"searched": "L2_H128_A3_Q192_F512", "baseline": "L2_H128_A2_Q128_F512"},
        "2x": {"searched": "L4_H128_A2_Q128_F512", "baseline": "L4_H128_A2_Q128_F512"}}})
    text = write_report(tmp_path, ["movie_sentiment", "sms_spam"], {}, 0).read_text()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text.splitlines()
            if line.startswith("| movie_sentiment") or line.startswith("| sms_spam")}
    assert rows[("movie_sentiment", "4x")].rstrip(" |").endswith("yes")
    assert "0.750" in rows[("movie_sentiment", "4x")] and "0.700" in rows[("movie_sentiment", "4x")]
    assert rows[("sms_spam", "4x")].rstrip(" |").endswith("tie")
    assert "same arch" in rows[("movie_sentiment", "2x")]
    assert "0.720 (0.500)" in text  # a model row: task accuracy with the majority accuracy beside it

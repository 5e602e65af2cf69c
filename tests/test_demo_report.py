"""The demo report (comparison with the BERT-ratio baseline, restart marks) and the demo fine-tuning restart rule, on hand-made artefacts."""

from __future__ import annotations

import json
from pathlib import Path

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
            restarted = {"restarts": 2} if (name, task) == ("L2_H128_A2_Q128_F512", "sms_spam") else {}
            _write(tmp_path / "finetune" / task / name / "metrics.json",
                   {"dev": {"accuracy": acc}, "majority_baseline": {"dev": {"accuracy": 0.5}}, **restarted})
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
    model_rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| L")}
    assert "0.990 (0.500) r2 |" in model_rows["L2_H128_A2_Q128_F512"]  # restarted twice, marked
    assert " r" not in model_rows["L2_H128_A3_Q192_F512"].split("|", 10)[-1]


def test_finetune_restarts_only_runs_that_end_at_the_majority_class(tmp_path):
    """The demo's restart rule: a run no better than the majority class on dev is rerun with the next seed,
    at most `restarts` times; the kept run's metrics.json records how many restarts it took."""
    from atb.demo.finetune_models import finetune_with_restarts
    from atb.finetune import FinetuneConfig

    def fake_finetune(outcomes):
        seeds = []

        def run(cfg):
            seeds.append(cfg.seed)
            acc = outcomes[len(seeds) - 1]
            record = {"task": "t", "seed": cfg.seed, "dev": {"accuracy": acc},
                      "majority_baseline": {"dev": {"accuracy": 0.6}}}
            _write(Path(cfg.out_dir) / "metrics.json", record)  # as finetune: returns what it writes
            return record
        return run, seeds

    cfg = FinetuneConfig(model="m", task="t", out_dir=str(tmp_path / "a"), seed=7)
    run, seeds = fake_finetune([0.6, 0.55, 0.8, 0.9])
    record = finetune_with_restarts(cfg, 3, run)
    assert seeds == [7, 8, 9] and record["dev"]["accuracy"] == 0.8 and record["restarts"] == 2
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["restarts"] == 2 and saved["seed"] == 9  # the kept run's file, not the first one's

    run, seeds = fake_finetune([0.6, 0.6, 0.6])
    assert finetune_with_restarts(cfg, 2, run)["restarts"] == 2 and seeds == [7, 8, 9]  # gives up after 2
    run, seeds = fake_finetune([0.61])
    assert finetune_with_restarts(cfg, 2, run)["restarts"] == 0 and seeds == [7]  # a good run is kept as is
    run, seeds = fake_finetune([0.5])
    assert "restarts" not in finetune_with_restarts(cfg, 0, run) and seeds == [7]


def test_a_run_whose_training_loss_stayed_at_chance_is_restarted_too():
    """Above the majority class on dev by luck, but the mean training loss never left ln 2: it did not learn."""
    from atb.demo.finetune_models import did_not_learn

    run = {"labels": ["0", "1"], "dev": {"accuracy": 0.524}, "majority_baseline": {"dev": {"accuracy": 0.508}}}
    assert did_not_learn({**run, "train": {"loss": 0.6959}})
    assert not did_not_learn({**run, "train": {"loss": 0.6295}})  # the demo's slowest learner that learned
    assert not did_not_learn({**run, "labels": None, "train": {"loss": 5.0}})  # regression: no chance level
    distilled = {**run, "train": {"loss": 0.9}, "config": {"teacher": "source/model"}}
    assert not did_not_learn(distilled)  # soft targets' loss: no chance level; dev accuracy still counts
    assert did_not_learn({**distilled, "dev": {"accuracy": 0.5}, "majority_baseline": {"dev": {"accuracy": 0.5}}})


def test_report_has_reference_rows_and_the_share_of_the_source_kept(tmp_path):
    _write(tmp_path / "develop" / "manifest.json", {"models": [
        {"arch_name": "L2_H96_A12_Q96_F384", "target": "4x", "params": 3e6, "path": "x"}]})
    scores = {"L2_H96_A12_Q96_F384": 0.72, "source": 0.90, "tfidf": 0.75}
    for name, acc in scores.items():
        deployed = {} if name == "tfidf" else {"deployed": {"runtime": "onnxruntime-int8", "dev": {"accuracy": acc - 0.01}}}
        _write(tmp_path / "finetune" / "movie_sentiment" / name / "metrics.json",
               {"dev": {"accuracy": acc}, "majority_baseline": {"dev": {"accuracy": 0.5}}, "params": 22e6,
                "sizes": {"train": 8000, "train_used": 2000, "dev": 900, "dev_used": 900}, **deployed})
    _write(tmp_path / "deploy" / "latency.json", {"settings": {"threads": 1, "batch": 1, "seq": 128},
                                                   "ms": {"L2_H96_A12_Q96_F384": 5.0, "source": 20.0}})
    text = write_report(tmp_path, ["movie_sentiment"], {}, 0).read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "| 0.720 (0.500) | 80.0% | 0.710 |" in rows["L2_H96_A12_Q96_F384"]  # 0.72 / 0.90 kept; as deployed
    assert "| 5.00 | 4.00 |" in rows["L2_H96_A12_Q96_F384"] and "| 20.00 | 1.00 |" in rows["source"]  # ORT int8
    assert "ONNX Runtime (CPU, 1 thread(s), batch 1, 128 tokens)" in text
    assert "fine-tuned the same way" in rows["source"] and "| 0.900 (0.500) | 100.0% |" in rows["source"]
    assert "TF-IDF" in rows["tfidf"] and rows["tfidf"].endswith("| 0.750 (0.500) | - | - |")
    assert "2000 of 8000 training rows" in text
    assert "Scored on all 900 dev rows" in text and "one standard error is 1.0 points" in text  # sqrt(.9 * .1 / 900)


def test_workers_sharing_a_run_list_take_each_run_once(tmp_path):
    """Fine-tuning workers on one list: every run is taken by exactly one of them, even when two processes
    race for the same runs."""
    import subprocess
    import sys

    claims = tmp_path / "claims"
    claims.mkdir()
    code = ("import sys; from pathlib import Path; from atb.demo.finetune_models import claim; "
            "print(' '.join(str(i) for i in range(1, 201) if claim(Path(sys.argv[1]), i)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(claims)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    taken = [[int(i) for i in p.communicate()[0].split()] for p in procs]
    assert sorted(taken[0] + taken[1]) == list(range(1, 201))

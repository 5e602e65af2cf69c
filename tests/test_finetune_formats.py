"""Fine-tuning on each task format: GLUE-style sentence pairs (MRPC columns), regression from JSONL,
SQuAD v1.1 QA with answers mapped through real tokenizer offsets.

The tasks come from `synthetic_tasks` (official formats, labels a simple function of the text).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from finetune_setup import fast_cfg
from synthetic_tasks import task_cfg, write_mrpc_task, write_regression_task, write_squad_task

from atb.finetune import finetune, metrics, qa
from atb.finetune.tasks import load_task


def test_sentence_pair_task_with_mrpc_columns(exports, tmp_path):
    """MRPC's header and column names; the label is only in sentence 2, so the pair must reach the model."""
    task = write_mrpc_task(tmp_path / "mrpc")
    record = finetune(fast_cfg(exports["bert"], task, tmp_path / "out", text_columns=["#1 String", "#2 String"],
                               label_column="Quality"))
    assert record["text_columns"] == ["#1 String", "#2 String"] and record["label_column"] == "Quality"
    assert record["dev"]["accuracy"] >= 0.9
    assert record["dev"]["accuracy"] > record["majority_baseline"]["dev"]["accuracy"] + 0.3
    assert record["format"] == "bert"
    assert load_task(task_cfg(task)).text_columns == ["#1 String", "#2 String"]  # also found without flags


def test_pair_encoding_uses_token_types(tokenizer_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from atb.finetune import classification

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ds = Dataset.from_dict({"text_a": ["the film"], "text_b": ["a plot"], "label": [1]})
    enc = classification.encode(ds, tokenizer, 32)[0]
    assert enc["label"] == 1 and set(enc["token_type_ids"]) == {0, 1}
    assert enc["input_ids"] == tokenizer("the film", "a plot")["input_ids"]


def test_regression_from_jsonl_reports_correlations(exports, tmp_path):
    task = write_regression_task(tmp_path / "stsb")
    record = finetune(fast_cfg(exports["bert"], task, tmp_path / "out"))
    assert record["task_type"] == "regression" and "majority_baseline" not in record
    assert record["text_columns"] == ["sentence1", "sentence2"] and record["label_column"] == "score"
    assert record["dev"]["pearson"] > 0.7 and record["dev"]["spearman"] > 0.7
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert len(config["id2label"]) == 1 and config["problem_type"] == "regression"


def test_squad_qa_finds_answers_across_windows_in_the_original_text(exports, tmp_path):
    task = write_squad_task(tmp_path / "squad", n_train=200, n_dev=30)
    out = tmp_path / "out"
    record = finetune(fast_cfg(exports["tinybert"], task, out, epochs=3, doc_stride=8, group_by_length=True))
    assert record["task_type"] == "qa"
    assert record["sizes"]["train_features"] > record["sizes"]["train"]  # contexts span several windows
    predictions = json.loads((out / "predictions_dev.json").read_text())
    dev = json.loads((task / "dev-v1.1.json").read_text())["data"][0]["paragraphs"]
    gold = {p["qas"][0]["id"]: (p["context"], p["qas"][0]["answers"]) for p in dev}
    assert set(predictions) == set(gold)
    for qid, answer in predictions.items():
        assert answer in gold[qid][0]  # cut from the original context, accents and case intact
    exact_raw = np.mean([predictions[q] == gold[q][1][0]["text"] for q in gold])
    assert exact_raw >= 0.7  # the model learned the task and the span mapping is exact (e.g. 'Zürich')
    expected = metrics.squad_metrics(predictions, {q: [a["text"] for a in g[1]] for q, g in gold.items()})
    assert record["dev"] == pytest.approx(expected)
    assert (out / "model" / "model.safetensors").is_file()


def test_answer_character_span_to_token_labels(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    context = "we flew to Paris . the capital of alpha is Zürich ."
    enc = tokenizer("what is the capital of alpha ?", context, return_offsets_mapping=True)
    start_char = context.index("Zürich")
    s, e = qa.token_span(enc["offset_mapping"], enc.sequence_ids(0), start_char, start_char + len("Zürich"))
    assert s > 0 and context[enc["offset_mapping"][s][0]:enc["offset_mapping"][e][1]] == "Zürich"
    assert enc.sequence_ids(0)[s] == 1
    outside = qa.token_span(enc["offset_mapping"], enc.sequence_ids(0), len(context) + 5, len(context) + 9)
    assert outside == (0, 0)

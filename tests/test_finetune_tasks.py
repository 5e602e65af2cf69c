"""Task files: formats and column detection, unlabelled test splits, clear errors for bad files, the
built-in tasks and the fixed evaluation subset."""

from __future__ import annotations

import json

import pytest
from synthetic_tasks import task_cfg, write_sst2_task

from atb.finetune import FinetuneConfig
from atb.finetune.tasks import load_task


# --- task files: formats, detection, errors ----------------------------------------------------------------

def test_builtin_tasks_load_with_their_sizes():
    for name, sizes, positives in (("movie_sentiment", (8486, 1063, 1017), (4200, 537, 504)),
                                   ("sms_spam", (4067, 546, 546), (503, 54, 84))):
        task = load_task(task_cfg(name))
        assert task.task_type == "classification" and task.label_names == ["0", "1"]
        assert tuple(len(task.splits[s]) for s in ("train", "dev", "test")) == sizes
        assert tuple(sum(task.splits[s]["label"]) for s in ("train", "dev", "test")) == positives
        assert task.text_columns == ["sentence"] and task.files["train"].name == "train.tsv.gz"
    without_test = load_task(task_cfg("sms_spam", eval_test=False))
    assert set(without_test.splits) == {"train", "dev"} and "test" not in without_test.files


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




def test_eval_subset_is_random_and_the_same_for_every_seed():
    """Task files are often sorted by label (movie_sentiment is): the first N dev rows would be one class."""
    import datasets

    from atb.finetune.tasks import EVAL_SUBSET_SEED, subsample

    sorted_by_label = datasets.Dataset.from_dict({"label": [0] * 500 + [1] * 500})
    picked = subsample(sorted_by_label, 100, EVAL_SUBSET_SEED)["label"]
    assert 30 <= sum(picked) <= 70
    assert picked == subsample(sorted_by_label, 100, EVAL_SUBSET_SEED)["label"]
    assert subsample(sorted_by_label, 100, None)["label"] == [0] * 100

"""Task distillation (`tools/finetune.py --teacher`): the student learns from the teacher's outputs, each
training feature carries the outputs the teacher gives it alone, the soft loss is the tempered KL divergence,
and a teacher that does not fit the task or the model is refused before any work.

Each learning test trains on labels that contradict the task (flipped classes, negated scores, answers
moved to the first word): a student that learns the task anyway learnt it from the teacher.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO
from finetune_setup import fast_cfg
from synthetic_tasks import contradicting_copy, write_regression_task, write_squad_task, write_sst2_task

from atb.finetune import finetune
from atb.finetune.tasks import load_task

QA = {"max_seq_len": 64, "doc_stride": 16}


def _score(record: dict, kind: str) -> float:
    dev = record["dev"]
    return {"classification": dev.get("accuracy"), "regression": dev.get("pearson"), "qa": dev.get("f1")}[kind]


@pytest.mark.parametrize("kind", ["classification", "regression", "qa"])
def test_a_student_learns_the_task_from_its_teacher_when_its_labels_contradict_it(exports, tmp_path, kind):
    writer = {"classification": write_sst2_task, "regression": write_regression_task, "qa": write_squad_task}[kind]
    extra = QA if kind == "qa" else {}
    task = writer(tmp_path / "task")
    wrong = contradicting_copy(task, kind, tmp_path / "wrong")
    teacher = finetune(fast_cfg(exports["tinybert"], task, tmp_path / "teacher", epochs=6, **extra))
    alone = finetune(fast_cfg(exports["tinybert"], wrong, tmp_path / "alone", epochs=6, **extra))
    taught = finetune(fast_cfg(exports["tinybert"], wrong, tmp_path / "taught", epochs=6, **extra,
                               teacher=str(tmp_path / "teacher" / "model"), kd_alpha=1.0))
    bar = {"classification": 0.9, "regression": 0.8, "qa": 80.0}[kind]
    assert _score(teacher, kind) >= bar
    assert _score(alone, kind) < bar / 2  # it learnt what its labels say
    assert _score(taught, kind) >= bar  # the same labels, and it learnt the task
    assert taught["config"]["teacher"] == str(tmp_path / "teacher" / "model")


@pytest.mark.parametrize("kind", ["classification", "qa"])
def test_each_feature_carries_the_outputs_the_teacher_gives_it_alone(exports, tmp_path, kind):
    """Batched and padded, the teacher's outputs per feature equal those of the feature run alone, and the
    collator pads them to the batch with outputs a softmax gives no weight."""
    import torch
    from transformers import AutoTokenizer

    from atb.finetune import classification, distill, qa

    extra = QA if kind == "qa" else {}
    task_dir = (write_squad_task if kind == "qa" else write_sst2_task)(tmp_path / "task")
    finetune(fast_cfg(exports["tinybert"], task_dir, tmp_path / "teacher", epochs=1, **extra))
    cfg = fast_cfg(exports["tinybert"], task_dir, tmp_path / "unused", **extra)
    task = load_task(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(exports["tinybert"]), trust_remote_code=True)
    teacher = distill.load_teacher(tmp_path / "teacher" / "model", task, tokenizer, False)
    train = task.splits["train"].select(range(24))
    features = (qa.encode_train(train, tokenizer, 32, 4) if kind == "qa"
                else classification.encode(train, tokenizer, 32))
    keys = distill.teacher_keys(task.task_type)
    with_teacher = distill.add_teacher_outputs(teacher, features, tokenizer, task.task_type, batch_size=5)
    assert len({len(ids) for ids in features["input_ids"]}) > 1  # the batches were padded
    for i in range(len(features)):
        alone = {k: torch.tensor([features[i][k]]) for k in ("input_ids", "token_type_ids", "attention_mask")}
        with torch.no_grad():
            out = teacher(**alone)
        expected = (out.start_logits, out.end_logits) if kind == "qa" else (out.logits,)
        for key, logits in zip(keys, expected):
            assert torch.allclose(torch.tensor(with_teacher[i][key]), logits[0], atol=1e-5)
    rows = [dict(with_teacher[i]) for i in range(6)]
    batch = distill.DistillationCollator(tokenizer, keys)(rows)
    for key in keys:
        assert batch[key].shape[0] == 6
        if kind == "qa":
            assert batch[key].shape == batch["input_ids"].shape
            padding = batch["attention_mask"] == 0
            assert padding.any() and bool((batch[key][padding] == distill.PAD_LOGIT).all())
            assert torch.softmax(batch[key], dim=-1)[padding].max() < 1e-30


def test_a_teacher_cache_gives_the_outputs_scoring_gives_and_scores_each_set_of_rows_once(exports, tmp_path):
    """Runs of one teacher on the same rows read its outputs from --teacher_cache instead of scoring again;
    other rows or other weights are scored anew; a damaged entry is refused in one line."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    from atb.finetune import classification, distill

    task_dir = write_sst2_task(tmp_path / "task")
    finetune(fast_cfg(exports["tinybert"], task_dir, tmp_path / "teacher", epochs=1))
    task = load_task(fast_cfg(exports["tinybert"], task_dir, tmp_path / "unused"))
    tokenizer = AutoTokenizer.from_pretrained(str(exports["tinybert"]), trust_remote_code=True)
    teacher = distill.load_teacher(tmp_path / "teacher" / "model", task, tokenizer, False)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    features = classification.encode(task.splits["train"].select(range(20)), tokenizer, 32)
    cache = tmp_path / "cache"

    def scored(rows=features, model=teacher):
        calls.clear()
        out = distill.add_teacher_outputs(model, rows, tokenizer, task.task_type, 8, cache)
        return out, len(calls)

    reference = distill.add_teacher_outputs(teacher, features, tokenizer, task.task_type, 8)
    first, first_calls = scored()
    again, again_calls = scored()
    assert first_calls == 3 and again_calls == 0 and len(list(cache.iterdir())) == 1
    assert first["teacher_logits"] == reference["teacher_logits"] == again["teacher_logits"]
    assert again.column_names == reference.column_names and again["input_ids"] == features["input_ids"]
    _, other_rows = scored(classification.encode(task.splits["train"].select(range(1, 21)), tokenizer, 32))
    changed = distill.load_teacher(tmp_path / "teacher" / "model", task, tokenizer, False)
    with torch.no_grad():
        changed.classifier.bias.add_(1.0)
    changed.register_forward_hook(lambda *_: calls.append(1))
    changed_out, changed_calls = scored(model=changed)
    assert other_rows == 3 and changed_calls == 3 and len(list(cache.iterdir())) == 3
    assert changed_out["teacher_logits"] != reference["teacher_logits"]
    for entry in cache.iterdir():
        shutil.rmtree(entry)
        entry.mkdir()
    with pytest.raises(ValueError, match="--teacher_cache: .* delete it to score again"):
        scored()


def test_the_soft_loss_is_the_tempered_kl_divergence_from_the_teacher():
    import torch
    from torch.distributions import Categorical, kl_divergence

    from atb.finetune.distill import soft_loss

    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(7, 5, generator=generator), torch.randn(7, 5, generator=generator)
    for temperature in (1.0, 2.0, 4.0):
        reference = kl_divergence(Categorical(logits=teacher / temperature), Categorical(logits=student / temperature))
        assert torch.allclose(soft_loss(student, teacher, temperature), temperature ** 2 * reference, rtol=1e-5)
    assert torch.allclose(soft_loss(teacher, teacher, 2.0), torch.zeros(7), atol=1e-6)


def _unlabelled_file(task: Path, kind: str, out: Path) -> Path:
    """The task's training text without its labels: the sentence column, or the questions without answers."""
    if kind == "qa":
        data = json.loads((task / "train-v1.1.json").read_text())
        for paragraph in data["data"][0]["paragraphs"]:
            for qa in paragraph["qas"]:
                del qa["answers"]
        out.write_text(json.dumps(data))
        return out
    lines = (task / "train.tsv").read_text().splitlines()
    out.write_text("sentence\n" + "".join(line.rsplit("\t", 1)[0] + "\n" for line in lines[1:]))
    return out


@pytest.mark.parametrize("kind", ["classification", "qa"])
def test_rows_without_labels_learn_the_teachers_outputs(exports, tmp_path, kind):
    """24 labelled rows that contradict the task, weighted nine to one against the teacher, and the task's
    text without labels: the student learns the task from the teacher through the unlabelled rows, and
    without them it does not."""
    writer, extra = (write_squad_task, QA) if kind == "qa" else (write_sst2_task, {})
    task = writer(tmp_path / "task")
    few = writer(tmp_path / "few", n_train=24, seed=5)
    for dev in task.glob("dev*"):
        shutil.copy2(dev, few / dev.name)
    wrong = contradicting_copy(few, kind, tmp_path / "wrong")
    finetune(fast_cfg(exports["tinybert"], task, tmp_path / "teacher", epochs=6, **extra))
    recipe = {"epochs": 6, "teacher": str(tmp_path / "teacher" / "model"), "kd_alpha": 0.1, **extra}
    alone = finetune(fast_cfg(exports["tinybert"], wrong, tmp_path / "alone", **recipe))
    text = _unlabelled_file(task, kind, tmp_path / ("text.json" if kind == "qa" else "text.tsv"))
    taught = finetune(fast_cfg(exports["tinybert"], wrong, tmp_path / "taught", **recipe, unlabelled_file=str(text)))
    bar = {"classification": 0.9, "qa": 80.0}[kind]
    assert _score(alone, kind) < bar / 2 and _score(taught, kind) >= bar
    rows = len(load_task(fast_cfg(exports["tinybert"], task, tmp_path / "unused", **extra)).splits["train"])
    assert taught["sizes"]["train_used"] == 24 and taught["sizes"]["unlabelled"] == rows
    features = taught["sizes"]["train_features"]
    # a sentence is one feature; a question is one or more windows of its context
    assert (features == 24 + rows if kind == "classification" else features >= 24 + rows)
    assert "unlabelled" not in taught  # not scored


def test_every_window_of_a_question_without_answers_learns_from_the_teacher_alone(exports, tmp_path):
    """An unlabelled question's windows carry no positions and count as unlabelled rows: the trainer mixes in their
    soft loss alone."""
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from atb.finetune import distill, qa
    from atb.finetune.runner import _load_model
    from atb.finetune.tasks import NO_LABEL

    task_dir = write_squad_task(tmp_path / "task", n_train=6, n_dev=2)
    text = _unlabelled_file(task_dir, "qa", tmp_path / "text.json")
    cfg = fast_cfg(exports["tinybert"], task_dir, tmp_path / "unused", unlabelled_file=str(text), **QA)
    task = load_task(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(exports["tinybert"]), trust_remote_code=True)
    labelled = qa.encode_train(task.splits["train"], tokenizer, 32, 4)
    unlabelled = qa.encode_train(task.splits["unlabelled"], tokenizer, 32, 4)
    assert len(unlabelled) == len(labelled) > len(task.splits["train"])  # several windows per question
    assert set(unlabelled["start_positions"]) == set(unlabelled["end_positions"]) == {NO_LABEL["qa"]}
    assert NO_LABEL["qa"] not in set(labelled["start_positions"]) | set(labelled["end_positions"])
    rows = [dict(f) for f in labelled.select(range(3))] + [dict(f) for f in unlabelled.select(range(3))]
    batch = DataCollatorWithPadding(tokenizer)(rows)
    targets = {k: batch.pop(k) for k in ("start_positions", "end_positions")}
    torch.manual_seed(0)
    model = _load_model(exports["tinybert"], task, tokenizer, cfg, True).eval()
    with torch.no_grad():
        outputs = model(**batch)
    teacher = {"teacher_start_logits": torch.randn_like(outputs.start_logits),
               "teacher_end_logits": torch.randn_like(outputs.end_logits)}
    hard, soft, is_labelled = distill.row_losses("qa", outputs, {**targets, **teacher}, 2.0)
    assert is_labelled.tolist() == [True] * 3 + [False] * 3
    assert torch.isfinite(hard).all() and torch.isfinite(soft).all()


@pytest.mark.parametrize("kind", ["classification", "regression", "qa"])
def test_the_labels_loss_row_by_row_is_the_heads_own(exports, tmp_path, kind):
    """Averaged over a batch, the per-row labels' loss the distillation mixes in is the loss the model's head
    computes itself."""
    import torch
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from atb.finetune import classification, distill, qa
    from atb.finetune.runner import _load_model

    writer = {"classification": write_sst2_task, "regression": write_regression_task, "qa": write_squad_task}[kind]
    cfg = fast_cfg(exports["tinybert"], writer(tmp_path / "task"), tmp_path / "unused", **(QA if kind == "qa" else {}))
    task = load_task(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(exports["tinybert"]), trust_remote_code=True)
    torch.manual_seed(0)
    model = _load_model(exports["tinybert"], task, tokenizer, cfg, True).eval()
    train = task.splits["train"].select(range(12))
    features = (qa.encode_train(train, tokenizer, 64, 16) if kind == "qa"
                else classification.encode(train, tokenizer, 32))
    batch = DataCollatorWithPadding(tokenizer)([dict(row) for row in features])
    with torch.no_grad():
        outputs = model(**batch)
        hard, soft, labelled = distill.row_losses(task.task_type, outputs, batch, 2.0)
    assert soft is None and bool(labelled.all()) and hard.shape == (len(features),)
    assert hard.mean().item() == pytest.approx(outputs.loss.item(), rel=1e-5)


def test_a_teacher_that_does_not_fit_is_refused_before_any_work(exports, tmp_path):
    sst2 = write_sst2_task(tmp_path / "sst2", n_train=16, n_dev=8)
    regression = write_regression_task(tmp_path / "sts", n_train=16, n_dev=8)
    finetune(fast_cfg(exports["tinybert"], regression, tmp_path / "sts_teacher", epochs=0.5))
    finetune(fast_cfg(exports["tinybert"], sst2, tmp_path / "sst2_teacher", epochs=0.5))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="predicts labels .* this task has"):
        finetune(fast_cfg(exports["tinybert"], sst2, out, teacher=str(tmp_path / "sts_teacher" / "model")))
    with pytest.raises(ValueError, match="regression teacher has one"):
        finetune(fast_cfg(exports["tinybert"], regression, out, teacher=str(tmp_path / "sst2_teacher" / "model")))
    other_vocab = Path(shutil.copytree(tmp_path / "sst2_teacher" / "model", tmp_path / "other_vocab"))
    tokenizer = json.loads((other_vocab / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["zzz"] = vocab.pop("film")  # one token renamed
    (other_vocab / "tokenizer.json").write_text(json.dumps(tokenizer))
    (other_vocab / "vocab.txt").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="tokenizer differs from the model's"):
        finetune(fast_cfg(exports["tinybert"], sst2, out, teacher=str(other_vocab)))
    with pytest.raises(FileNotFoundError, match="--teacher .* not found"):
        finetune(fast_cfg(exports["tinybert"], sst2, out, teacher=str(tmp_path / "missing")))
    teacher = str(tmp_path / "sst2_teacher" / "model")
    with pytest.raises(ValueError, match="--unlabelled_file needs --teacher"):
        finetune(fast_cfg(exports["tinybert"], sst2, out, unlabelled_file=str(sst2 / "train.tsv")))
    with pytest.raises(FileNotFoundError, match="--unlabelled_file .* not found"):
        finetune(fast_cfg(exports["tinybert"], sst2, out, teacher=teacher, unlabelled_file=str(tmp_path / "none.tsv")))
    (tmp_path / "other_columns.tsv").write_text("premise\nthe film was good\n")
    with pytest.raises(ValueError, match="--unlabelled_file"):
        finetune(fast_cfg(exports["tinybert"], sst2, out, teacher=teacher,
                          unlabelled_file=str(tmp_path / "other_columns.tsv")))
    squad = write_squad_task(tmp_path / "squad", n_train=2, n_dev=2)
    with pytest.raises(ValueError, match="--unlabelled_file .* must be SQuAD v1.1 JSON"):
        finetune(fast_cfg(exports["tinybert"], squad, out, teacher=teacher, unlabelled_file=str(sst2 / "train.tsv")))
    for flags, message in (({"model": "tfidf"}, "tfidf baseline does not learn"), ({"kd_alpha": 0.0}, "--kd_alpha"),
                           ({"kd_alpha": 1.5}, "--kd_alpha"), ({"kd_temperature": 0.0}, "--kd_temperature")):
        with pytest.raises(ValueError, match=message):
            finetune(fast_cfg(flags.pop("model", exports["tinybert"]), sst2, out,
                              teacher=str(tmp_path / "sst2_teacher" / "model"), **flags))
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "finetune.py"), "--model", str(exports["tinybert"]),
                           "--task", str(sst2), "--out_dir", str(out), "--teacher",
                           str(tmp_path / "sts_teacher" / "model")],
                          check=False, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "predicts labels" in proc.stderr

"""Tiny synthetic tasks in the official formats (SST-2 / MRPC TSV, JSONL, SQuAD JSON) whose label is a simple
function of the text, so a micro model must learn them: a pipeline that dropped the second sentence,
mis-aligned labels or cut answers from the wrong characters would fail the bounds of the tests using them."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from atb.finetune import FinetuneConfig


GOOD = ["good", "great", "fine", "superb", "lovely", "brilliant"]
BAD = ["bad", "awful", "poor", "dull", "boring", "terrible"]
FILLER = ["the", "film", "was", "a", "plot", "actor", "story", "and", "very", "quite", "scene", "movie"]
NAMES = ["Zürich", "Paris", "Oslo", "Lima", "Quito", "Cairo", "Dakar", "Hanoi", "Perth", "Tunis"]
COUNTRIES = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "zeta", "iota"]


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


def contradicting_copy(task: Path, kind: str, out: Path) -> Path:
    """A copy of `task` whose training labels say the opposite of the task (dev unchanged)."""
    shutil.copytree(task, out)
    if kind == "classification":
        lines = (task / "train.tsv").read_text().splitlines()
        flipped = [lines[0]] + [f"{text}\t{1 - int(label)}" for text, label in (line.rsplit("\t", 1) for line in lines[1:])]
        (out / "train.tsv").write_text("\n".join(flipped) + "\n")
    elif kind == "regression":
        rows = [json.loads(line) for line in (task / "train.jsonl").read_text().splitlines()]
        (out / "train.jsonl").write_text("".join(json.dumps({**r, "score": -r["score"]}) + "\n" for r in rows))
    else:
        data = json.loads((task / "train-v1.1.json").read_text())
        for paragraph in data["data"][0]["paragraphs"]:
            first = paragraph["context"].split(" ")[0]
            for qa in paragraph["qas"]:
                qa["answers"] = [{"text": first, "answer_start": 0}]
        (out / "train-v1.1.json").write_text(json.dumps(data))
    return out


def task_cfg(task, **overrides) -> FinetuneConfig:
    """A config for loading a task only (model and output never touched)."""
    return FinetuneConfig(model="unused", task=str(task), out_dir="unused", **overrides)

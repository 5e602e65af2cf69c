"""tools/search.py as users run it: on 1 and 2 CPU ranks (torchrun, gloo), stopped and resumed, from a
tiny SuperPLM folder and a fixed dev set; the same seed must give the same search on any number of ranks."""

from __future__ import annotations

import json
import random

import pytest
from conftest import make_supernet
from launching import run_tool
from test_search_fitness import masked_batches, write_tiny_task

from atb.search.state import read_journals
from atb.space import Arch, SearchSpace


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from atb.search.dev_data import save_dev_batches
    from atb.model.supernet_io import save_supernet

    root = tmp_path_factory.mktemp("search_ckpt")
    save_supernet(make_supernet("tiny", vocab=100, positions=32, seed=3), root / "supernet",
                  meta={"step": 7, "seq_len": 16})
    save_dev_batches(masked_batches(n=2, vocab=100), root / "dev.safetensors")
    return root


@pytest.fixture(scope="module")
def one_rank(checkpoint):
    """The reference: the whole search on one rank, uninterrupted."""
    out = checkpoint / "one_rank"
    run_tool("search", search_args(checkpoint, out), nproc=1, timeout=300)
    return out


def search_args(ckpt, out, **overrides):
    args = {"checkpoint": ckpt / "supernet", "dev_data": ckpt / "dev.safetensors", "out_dir": out,
            "targets": "2x,4x", "predictor": "flops", "seq_len": 16, "preset": "tiny", "generations": 3,
            "seed": 11, "progress": False}
    args.update(overrides)
    return [item for k, v in args.items() for item in (f"--{k}", v)]


def scores(out) -> dict[str, float]:
    state = json.loads((out / "state.json").read_text())
    return {row["arch"]: row["score"] for row in state["evaluated"]}


def picks(out) -> list:
    results = json.loads((out / "results.json").read_text())
    return [(t["target"], t["best"]["name"], t["best"]["score"]) for t in results["targets"]]


def test_two_ranks_search_exactly_like_one(checkpoint, one_rank, tmp_path):
    run_tool("search", search_args(checkpoint, tmp_path / "two"), nproc=2, timeout=300)
    assert scores(one_rank) == scores(tmp_path / "two")  # same archs, bitwise-equal scores
    assert picks(one_rank) == picks(tmp_path / "two")
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["world_size"] == 2 and two["status"] == "complete"
    # both ranks really worked: each wrote a journal of its own share
    lines = {p.name: len(p.read_text().splitlines()) for p in (tmp_path / "two" / "journal").glob("*.jsonl")}
    assert set(lines) == {"rank0.jsonl", "rank1.jsonl"} and min(lines.values()) > 0
    space = SearchSpace.load("tiny")
    for t in two["targets"]:
        space.validate(Arch.from_dict(t["best"]["arch"]))
        low, high = t["band_ms"]
        assert low <= t["best"]["latency_ms"] <= high
    assert two["sanity"]["largest"]["name"] == space.largest().name
    assert (tmp_path / "two" / "pareto.png").stat().st_size > 1000


def test_stopped_two_rank_search_resumed_on_one_rank_matches_and_counts(checkpoint, one_rank, tmp_path):
    out = tmp_path / "split"
    run_tool("search", search_args(checkpoint, out, stop_after_generation=1), nproc=2, timeout=300)
    assert json.loads((out / "results.json").read_text())["status"] == "in progress"
    run_tool("search", search_args(checkpoint, out), nproc=1, timeout=300)
    assert scores(out) == scores(one_rank) and picks(out) == picks(one_rank)
    _, computed = read_journals(out)
    assert computed == len(scores(out))  # every arch evaluated exactly once over the two runs
    evaluations = json.loads((out / "results.json").read_text())["evaluations"]
    assert evaluations["computed"] == evaluations["unique_archs"] == computed


def test_bare_number_targets_are_milliseconds_of_a_measured_predictor(checkpoint, tmp_path):
    """`--targets 12,20` (fire hands over a tuple of ints) means 12 ms and 20 ms."""
    import numpy as np

    from atb.latency.features import arch_flops
    from atb.latency.predictor import FitOptions, LatencyPredictor

    tiny = SearchSpace.load("tiny")
    rng = random.Random(0)
    archs = sorted({tiny.sample(rng) for _ in range(80)})
    ms = np.array([5 + 25 * arch_flops(a, seq=16) / arch_flops(tiny.largest(), seq=16) for a in archs])
    LatencyPredictor.fit(archs, ms, tiny.to_spec(), {"device": "cpu", "batch": 1, "seq": 16},
                         options=FitOptions(ensemble=1, ridge=1e-3)).save(tmp_path / "predictor")
    run_tool("search", search_args(checkpoint, tmp_path / "out", targets="12,20", predictor=tmp_path / "predictor",
                                   generations=1))
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(t["target"], t["target_ms"]) for t in results["targets"]] == [("12", 12.0), ("20", 20.0)]
    assert results["latency_units"] == "ms"


def test_search_within_a_part_of_the_supernets_space(checkpoint, tmp_path):
    """--space restricts the search (here: hidden fixed at its largest); a space reaching outside the
    SuperPLM's is refused in one line."""
    import yaml

    spec = SearchSpace.load("tiny").to_spec()
    widest = {**spec, "name": "tiny_widest", "hidden": {"min": spec["hidden"]["max"], "max": spec["hidden"]["max"]}}
    (tmp_path / "part.yaml").write_text(yaml.safe_dump(widest))
    run_tool("search", search_args(checkpoint, tmp_path / "out", space=tmp_path / "part.yaml", targets="2x",
                                   generations=2))
    evaluated = [Arch.parse(a) for a in scores(tmp_path / "out")]
    assert evaluated and {a.hidden for a in evaluated} == {spec["hidden"]["max"]}
    (tmp_path / "over.yaml").write_text(yaml.safe_dump({**widest, "hidden": {"min": 8, "max": 4096, "step": 8}}))
    proc = run_tool("search", search_args(checkpoint, tmp_path / "bad", space=tmp_path / "over.yaml"), check=False)
    assert proc.returncode == 2 and "is not part of space" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_inputs_fail_with_one_clear_line(checkpoint, tmp_path):
    proc = run_tool("search", search_args(checkpoint, tmp_path / "a", targets="1000x"), check=False)
    assert proc.returncode == 2 and "misses the space" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_tool("search", search_args(checkpoint, tmp_path / "b", checkpoint=tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr
    run_tool("search", search_args(checkpoint, tmp_path / "c", stop_after_generation=1))
    proc = run_tool("search", search_args(checkpoint, tmp_path / "c", seed=12), check=False)
    assert proc.returncode == 2 and "other settings" in proc.stderr


def test_search_from_a_deepspeed_checkpoint_scores_the_held_out_dev_blocks(tmp_path):
    """The real path: pre-train a tiny SuperPLM (ZeRO-2 checkpoint), search straight from the checkpoint
    directory with the corpus' dev split as fitness data; the checkpoint is consolidated once."""
    from atb.data import (
        build_blocks,
        dev_batches,
        load_corpus,
        load_tokenizer,
        train_wordpiece,
    )
    from atb.search.fitness import DevLossFitness
    from atb.model.supernet_io import load_supernet

    corpus = tmp_path / "corpus.txt"
    words = "the quick brown fox jumps over a lazy dog while it is raining in the old town".split()
    rng = __import__("random").Random(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words) for _ in range(20)) for _ in range(300)) + "\n")
    train_wordpiece(load_corpus(str(corpus)), 80, tmp_path / "tokenizer")
    pre = tmp_path / "pretrain"
    run_tool("pretrain", ["--out_dir", pre, "--corpus", corpus, "--tokenizer", tmp_path / "tokenizer",
                          "--space", "tiny", "--seq_len", 16, "--micro_batch", 4, "--steps", 4, "--save_every", 4, "--warmup_steps", 1,
                          "--ds_config", "zero2_fp32", "--report_to", "none", "--dev_fraction", 0.05, "--seed", 3],
             nproc=1, timeout=300)
    out = tmp_path / "search"
    # no data flags: corpus, dev split, seed, seq_len and tokenizer come from the checkpoint's record
    args = ["--checkpoint", pre / "checkpoints", "--out_dir", out, "--batch_size", 8, "--dev_batches", 2, "--targets", "3x", "--preset", "tiny",
            "--generations", 2, "--progress", False]
    run_tool("search", args, nproc=2, timeout=300)
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoint_step"] == 4 and results["fitness"]["name"] == "mlm_dev_loss"
    model, meta = load_supernet(out / "supernet")  # consolidated once, by rank 0
    assert meta["step"] == 4 and meta["source_checkpoint"] == str((pre / "checkpoints").resolve())
    # the scores are the MLM loss on the corpus' held-out blocks, recomputed here independently
    tokenizer = load_tokenizer(meta["tokenizer"])
    blocks = build_blocks(load_corpus(str(corpus)), tokenizer, 16, dev_fraction=0.05, seed=3)
    fitness = DevLossFitness(model, dev_batches(blocks["dev"], tokenizer, 8, 3)[:2])
    best = results["targets"][0]["best"]
    assert fitness(Arch.from_dict(best["arch"])) == pytest.approx(best["score"], rel=1e-6)
    largest = results["sanity"]["largest"]
    assert fitness(Arch.from_dict(largest["arch"])) == pytest.approx(largest["score"], rel=1e-6)


@pytest.mark.slow  # KD pre-training + KD search: ~1-2 min on 2 cores
def test_kd_fitness_from_a_kd_checkpoint_uses_its_trained_projection(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from atb.data import load_corpus, train_wordpiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the cat sat on the mat number {i} and the dog ran" for i in range(200)) + "\n")
    train_wordpiece(load_corpus(str(corpus)), 60, tmp_path / "tokenizer")
    vocab = len(AutoTokenizer.from_pretrained(tmp_path / "tokenizer"))
    BertModel(BertConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=64)).save_pretrained(tmp_path / "teacher")
    pre = tmp_path / "pretrain"
    run_tool("pretrain", ["--out_dir", pre, "--corpus", corpus, "--tokenizer", tmp_path / "tokenizer", "--space",
                          "tiny_kd", "--objective", "kd", "--teacher", tmp_path / "teacher", "--seq_len", 16,
                          "--micro_batch", 4, "--steps", 3, "--save_every", 3, "--warmup_steps", 1, "--ds_config",
                          "zero2_fp32", "--report_to", "none", "--dev_fraction", 0.05], nproc=1, timeout=300)
    out = tmp_path / "search"
    proc = run_tool("search", ["--checkpoint", pre / "checkpoints", "--out_dir", out, "--corpus", corpus, "--fitness",
                               "kd", "--teacher", tmp_path / "teacher", "--dev_fraction", 0.05, "--batch_size", 8,
                               "--dev_batches", 2, "--targets", "2x", "--preset", "tiny", "--generations", 1,
                               "--progress", False], nproc=1, timeout=300)
    assert "no trained KD projection" not in proc.stderr
    assert (out / "supernet" / "kd_projection.safetensors").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["fitness"]["name"] == "kd_dev_loss" and results["targets"][0]["best"]["score"] > 0


@pytest.mark.slow  # the deepspeed launcher adds ~25 s of start-up
def test_deepspeed_launcher_gives_the_same_search(checkpoint, one_rank, tmp_path):
    from conftest import PYTHON
    from launching import free_port

    launcher = [PYTHON, "-m", "deepspeed.launcher.runner", "--num_accelerators", "2", "--master_port", str(free_port())]
    run_tool("search", search_args(checkpoint, tmp_path / "ds"), launcher=launcher, timeout=300)
    assert scores(tmp_path / "ds") == scores(one_rank) and picks(tmp_path / "ds") == picks(one_rank)
    assert json.loads((tmp_path / "ds" / "results.json").read_text())["world_size"] == 2


@pytest.mark.slow  # a fine-tune per candidate, each in its own child process
def test_finetune_fitness_on_two_ranks(tmp_path):
    from atb.model.supernet_io import save_supernet

    task, tokenizer, vocab = write_tiny_task(tmp_path)
    save_supernet(make_supernet("tiny", vocab=vocab, positions=32, seed=3), tmp_path / "supernet",
                  meta={"step": 1, "seq_len": 16, "tokenizer": str(tokenizer)})
    out = tmp_path / "search"
    run_tool("search", ["--checkpoint", tmp_path / "supernet", "--fitness", "finetune", "--task", task,
                        "--finetune_epochs", 2, "--out_dir", out, "--targets", "2x", "--preset", "tiny",
                        "--population", 2, "--generations", 1, "--progress", False], nproc=2, timeout=600)
    results = json.loads((out / "results.json").read_text())
    assert results["fitness"] == {"name": "finetune_task", "higher_is_better": True}
    rows = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(0.0 <= r["score"] <= 1.0 for r in rows)
    assert {p.name for p in (out / "journal").iterdir()} == {"rank0.jsonl", "rank1.jsonl"}

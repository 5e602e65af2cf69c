"""Compressing a pre-trained BERT: importance, the ordered SuperPLM whose largest sub-network is the source,
importance.json reuse and staleness, importance over 2 ranks, and bad sources."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from atb.model.bert_source import build_model, content_hash, declared_pooling, read_config, source_dims
from atb.model.importance import compute_importance
from atb.model.ordering import read_importance, write_importance
from atb.space import Arch
from bert_sources import (declare_mean_pooling, from_model_space, importance_of, mlm_batch, ordered_supernet,
                          padded_batch, save_random_bert)
from launching import run_tool

LINES = ["the quick brown fox jumps over the lazy dog", "a journey of a thousand miles begins with a single step",
         "all happy families are alike each unhappy family is unhappy in its own way"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from atb.data import load_corpus, train_wordpiece

    root = tmp_path_factory.mktemp("compress_data")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(f"{line} {i}" for i in range(40) for line in LINES) + "\n")
    tokenizer = train_wordpiece(load_corpus(str(corpus)), 100, root / "tokenizer")
    return corpus, root / "tokenizer", len(tokenizer)


@pytest.fixture(scope="module")
def source(data, tmp_path_factory):
    """A random BERT with the data's tokenizer (so the run takes it as the source's own), packaged as a
    mean-pooling sentence encoder like the demo's."""
    import shutil

    folder = save_random_bert(tmp_path_factory.mktemp("src") / "bert", vocab=data[2])
    for item in data[1].iterdir():
        shutil.copy2(item, folder / item.name)
    return declare_mean_pooling(folder)


@pytest.mark.parametrize("estimator", ["activation", "taylor"])
def test_largest_subnet_of_the_ordered_supernet_is_the_source(tmp_path, estimator):
    folder = save_random_bert(tmp_path / "bert", mlm_head=estimator == "taylor")
    importance, dims = importance_of(folder, estimator)
    supernet, order = ordered_supernet(folder, importance, dims, tmp_path)
    assert not torch.equal(order.hidden, torch.arange(dims.hidden))  # a real reordering is under test
    batch = padded_batch()
    with torch.no_grad():
        hidden, _ = supernet.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        expected = build_model(folder, read_config(folder))(**batch).last_hidden_state[..., order.hidden]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-5, rtol=1e-5)


def test_a_cls_sources_pooler_rides_frozen_into_every_export(tmp_path):
    """The source's [CLS] pooler is carried (frozen) by the SuperPLM: the largest export's pooled output is the
    source's, and a smaller export's classifier loads its pooler rather than starting one at random."""
    from transformers import BertForSequenceClassification, BertModel

    from atb.model import tiny
    from atb.model.extract import extract

    folder = save_random_bert(tmp_path / "bert")
    importance, dims = importance_of(folder)
    supernet, order = ordered_supernet(folder, importance, dims, tmp_path, pooler=True)
    assert not any(p.requires_grad for p in supernet.bert.pooler.parameters())
    batch = padded_batch()
    largest = extract(supernet, supernet.space.largest(), tmp_path / "largest")
    with torch.no_grad():
        expected = build_model(folder, read_config(folder))(**batch).pooler_output
        hidden, _ = supernet.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        torch.testing.assert_close(supernet.bert.pooler(hidden, dims.hidden), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(BertModel.from_pretrained(largest)(**batch).pooler_output, expected,
                                   atol=1e-5, rtol=1e-5)
    reference = build_model(tmp_path / "ordered", read_config(tmp_path / "ordered")).pooler.dense.weight
    for arch, cls in (("L1_H24_A4_Q24_F32", BertForSequenceClassification),
                      ("L2_H32_A4_Q16_F48", tiny.TinyBertForSequenceClassification)):
        hidden = Arch.parse(arch).hidden
        model, info = cls.from_pretrained(extract(supernet, Arch.parse(arch), tmp_path / arch), num_labels=2,
                                          output_loading_info=True)
        assert all(key.startswith("classifier.") for key in info["missing_keys"]), info["missing_keys"]
        torch.testing.assert_close(model.bert.pooler.dense.weight, reference[:hidden, :hidden])


def test_importance_file_round_trip_and_staleness(tmp_path):
    folder = save_random_bert(tmp_path / "bert")
    other = save_random_bert(tmp_path / "other", seed=1)
    importance, dims = importance_of(folder)
    order = importance.order(within_heads=True)
    spec = from_model_space(dims).to_spec()
    path = tmp_path / "importance.json"
    write_importance(path, importance, order, folder, content_hash(folder), spec, {"samples": 12})
    again, order_again = read_importance(path, content_hash(folder), spec, "activation", dims)
    assert torch.equal(order_again.hidden, order.hidden)
    torch.testing.assert_close(again.ffn, importance.ffn)
    with pytest.raises(ValueError, match="stale: computed for another source"):
        read_importance(path, content_hash(other), spec, "activation", dims)
    with pytest.raises(ValueError, match="stale: computed for space"):
        read_importance(path, content_hash(folder), {**spec, "name": "x"}, "activation", dims)
    with pytest.raises(ValueError, match="asks for 'taylor'"):
        read_importance(path, content_hash(folder), spec, "taylor", dims)
    path.write_text(path.read_text()[:100])
    with pytest.raises(ValueError, match="not a readable importance file"):
        read_importance(path, content_hash(folder), spec, "activation", dims)


def importance_args(data, source, out, **extra):
    args = {"source": source, "out_dir": out, "corpus": data[0], "seq_len": 16, "calib_samples": 24,
            "micro_batch": 4, **extra}
    return [item for k, v in args.items() for item in (f"--{k}", v)]


def assert_same_ranking(order: list, reference: list, scores: torch.Tensor) -> None:
    """`order` ranks units as `reference` does, except that units whose scores agree to float-summation noise
    may swap places: scores summed in another order can flip a near-tie."""
    order, reference = torch.tensor(order), torch.tensor(reference)
    assert torch.equal(order.sort(-1).values, reference.sort(-1).values)  # the same units, each once
    torch.testing.assert_close(scores.gather(-1, order), scores.gather(-1, reference), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("estimator", ["activation", "taylor"])
def test_importance_on_two_ranks_equals_one(data, source, tmp_path, estimator):
    for ranks in (1, 2):
        run_tool("importance", importance_args(data, source, tmp_path / f"r{ranks}", estimator=estimator), nproc=ranks)
    one, two = (json.loads((tmp_path / f"r{r}" / "importance.json").read_text()) for r in (1, 2))
    assert one["samples"] == two["samples"] == 24
    for key in ("hidden", "heads", "qk_dims", "v_dims", "ffn", "layers"):
        torch.testing.assert_close(torch.tensor(two["scores"][key]), torch.tensor(one["scores"][key]),
                                   rtol=1e-6, atol=1e-9)
    for i, (layer_one, layer_two) in enumerate(zip(one["order"]["layers"], two["order"]["layers"])):
        for key in ("heads", "qk_dims", "v_dims", "ffn"):
            assert_same_ranking(layer_two[key], layer_one[key], torch.tensor(one["scores"][key][i]))
        for key in ("qk_basis", "v_basis"):  # from moments summed in another order
            torch.testing.assert_close(torch.tensor(layer_two[key]), torch.tensor(layer_one[key]), rtol=1e-6, atol=1e-8)
    hidden_scores = torch.tensor(one["scores"]["hidden"])
    assert_same_ranking(two["order"]["hidden"], one["order"]["hidden"], hidden_scores)
    assert_same_ranking(one["order"]["hidden"], hidden_scores.argsort(descending=True).tolist(), hidden_scores)
    if estimator == "activation":  # its FFN order is the greedy reconstruction order, not the scores' ranking
        by_score = [torch.tensor(s).argsort(descending=True).tolist() for s in one["scores"]["ffn"]]
        assert [layer["ffn"] for layer in one["order"]["layers"]] != by_score


PRETRAIN = ["--seq_len", 16, "--micro_batch", 4, "--steps", 2, "--save_every", 2, "--calib_samples", 16,
            "--ds_config", "zero2_fp32", "--report_to", "none", "--dev_fraction", 0.05, "--warmup_steps", 1]


@pytest.fixture(scope="module")
def compressed(data, source, tmp_path_factory):
    """A SuperPLM pre-trained on 2 ranks from the source (importance, ordered copy, KD)."""
    out = tmp_path_factory.mktemp("compressed") / "run"
    run_tool("pretrain", ["--out_dir", out, "--init_from", source, "--corpus", data[0], *PRETRAIN], nproc=2)
    return out


def test_pretrain_from_a_source_distils_it_into_an_ordered_supernet(data, source, compressed, tmp_path):
    out = compressed
    record = json.loads((out / "supernet" / "supernet.json").read_text())
    assert record["meta"]["objective"] == "kd" and record["meta"]["teacher"] == str((out / "source_ordered").resolve())
    assert record["config"]["space"]["name"] == "from_model"
    # every sub-network keeps the source's softmax scale: the head bases put a score in a head's leading dims
    assert record["config"]["attention_scale_dim"] == source_dims(read_config(source)).head_dim
    assert record["config"]["classifier_pooling"] == "mean"  # the source's sentence vector, for its exports
    imported = json.loads((out / "importance.json").read_text())
    assert imported["estimator"] == "activation" and imported["samples"] == 16
    # searched without --fitness, it is scored by its KD loss to the teacher it was distilled from
    run_tool("search", ["--checkpoint", out / "supernet", "--targets", "2x", "--preset", "tiny", "--plot", "false",
                        "--progress", "false", "--out_dir", tmp_path / "search"])
    searched = json.loads((tmp_path / "search" / "results.json").read_text())["config"]
    assert (searched["fitness"], searched["teacher"]) == ("kd", record["meta"]["teacher"])
    # a re-run with another source in the same run directory: the importance file is stale
    other = save_random_bert(tmp_path / "other", vocab=data[2], seed=3)
    for item in data[1].iterdir():
        (other / item.name).write_bytes(item.read_bytes())
    before = sorted(p.name for p in out.iterdir())
    proc = run_tool("pretrain", ["--out_dir", out, "--init_from", other, "--corpus", data[0], *PRETRAIN], check=False)
    assert proc.returncode == 2 and "importance.json is stale" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_develop_refits_students_to_the_source_on_two_ranks_as_on_one(compressed, tmp_path):
    """develop's reconstruction (calibration split over 2 ranks, lr 0 so training leaves the weights alone)
    == the same students refitted in this process on one rank."""
    from transformers import AutoModelForMaskedLM

    from atb.data import build_blocks, load_corpus, load_tokenizer
    from atb.model.extract import build_masked_lm
    from atb.model.supernet_io import load_supernet
    from atb.train.distributed import DistEnv
    from atb.train.reconstruction import reconstruct_students

    archs = ["L2_H24_A4_Q16_F32", "L1_H32_A4_Q32_F16"]
    out = tmp_path / "develop"
    run_tool("develop", ["--supernet", compressed / "supernet", "--archs", ",".join(archs), "--out_dir", out,
                         "--steps", 1, "--lr", 0, "--warmup_steps", 1, "--micro_batch", 4, "--calib_samples", 16,
                         "--ds_config", "zero2_fp32", "--report_to", "none", "--measure_latency", "false"], nproc=2)
    supernet, meta = load_supernet(compressed / "supernet")
    tokenizer = load_tokenizer(meta["tokenizer"])
    blocks = build_blocks(load_corpus(meta["corpus"]), tokenizer, meta["seq_len"], meta["dev_fraction"],
                          meta["data_seed"])
    expected = [build_masked_lm(supernet, Arch.parse(a)) for a in archs]
    plain = [copy.deepcopy(m) for m in expected]
    summaries = reconstruct_students(expected, meta["ordered_source"], blocks["train"], 16, 4,
                                     DistEnv(0, 1, 0, torch.device("cpu")))
    manifest = json.loads((out / "manifest.json").read_text())
    for row, want, before, summary in zip(manifest["models"], expected, plain, summaries):
        assert summary["projections"]["refitted"] > 0
        for kind in ("projections", "layer_norms"):  # rounded errors from sums in another order may differ by 1e-4
            got_fits, want_fits = row["reconstruction"][kind], summary[kind]
            assert (got_fits["refitted"], got_fits["of"]) == (want_fits["refitted"], want_fits["of"])
            for key in ("held_out_error_before", "held_out_error_after"):
                assert got_fits[key] == pytest.approx(want_fits[key], abs=2e-4)
        got = AutoModelForMaskedLM.from_pretrained(row["path"], trust_remote_code=True).state_dict()
        ref, old = want.state_dict(), before.state_dict()
        changed = [k for k in ref if not torch.equal(ref[k], old[k])]
        assert changed and all(k.endswith(("output.dense.weight", "output.dense.bias", "LayerNorm.weight",
                                           "LayerNorm.bias")) for k in changed)
        for key, value in ref.items():
            torch.testing.assert_close(got[key], value, atol=1e-6, rtol=1e-5)


def test_the_sentence_vector_a_source_declares(tmp_path):
    folder = save_random_bert(tmp_path / "bert")
    assert declared_pooling(folder) == "cls"
    assert declared_pooling(declare_mean_pooling(folder)) == "mean"
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert declared_pooling(folder) == "cls"
    (folder / "modules.json").write_text("[{")
    with pytest.raises(ValueError, match="modules.json: cannot read the sentence-transformers pooling"):
        declared_pooling(folder)


def test_bad_sources_fail_clearly_and_write_nothing(data, source, tmp_path):
    def fails(needle, **overrides):
        out = tmp_path / "never"
        args = {"out_dir": out, "init_from": source, "corpus": data[0], "seq_len": 16, "report_to": "none",
                "ds_config": "zero2_fp32", **overrides}
        proc = run_tool("pretrain", [i for k, v in args.items() for i in (f"--{k}", v)], check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 3
        assert not out.exists()

    distilbert = tmp_path / "distilbert"
    distilbert.mkdir()
    (distilbert / "config.json").write_text(json.dumps({**read_config(source), "model_type": "distilbert"}))
    fails("is not BERT-family", init_from=distilbert)
    fails("use the source's own", tokenizer="demo")
    fails("larger than the source", space="tiny")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("estimator", ["activation", "taylor"])
def test_importance_on_the_gpu_matches_the_cpu(tmp_path, estimator):
    folder = save_random_bert(tmp_path / "bert", mlm_head=estimator == "taylor")
    on_cpu, dims = importance_of(folder, estimator)
    model = build_model(folder, read_config(folder), with_mlm_head=estimator == "taylor").cuda()
    batches = [{k: v.cuda() for k, v in mlm_batch(seed=s).items()} for s in range(3)]
    on_gpu = compute_importance(model, batches, dims, estimator)
    for key in ("hidden", "heads", "qk_dims", "v_dims", "ffn", "layers"):
        torch.testing.assert_close(getattr(on_gpu, key), getattr(on_cpu, key), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_representation_fitness_is_one_for_the_source_and_lower_for_its_sub_networks(tmp_path, pooling):
    """The search's CKA fitness against the teacher: exactly 1 for the sub-network that is the teacher (its
    channels reordered), below 1 for a narrower and a shallower one; linear CKA ignores rotation and scale."""
    from atb.search.fitness import RepresentationFitness, linear_cka
    from atb.train.objectives import Teacher

    x = torch.randn(200, 16, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(200, 24, dtype=torch.float64)) < 0.3

    folder = save_random_bert(tmp_path / "bert", layers=2, hidden=32, heads=4, ffn=64)
    supernet, _ = ordered_supernet(folder, *importance_of(folder), tmp_path)
    supernet.config.classifier_pooling = pooling
    space = supernet.space
    batches = [padded_batch(seed=s, batch=6) for s in range(3)]
    fitness = RepresentationFitness(supernet, batches, Teacher.load(str(folder), torch.device("cpu"), torch.float32))
    assert fitness(space.largest()) == pytest.approx(1.0, abs=1e-6)

    def representations(arch):  # every real token's state, and the sentence vector the classifier reads
        tokens, sentences = [], []
        with torch.no_grad():
            for b in batches:
                hidden, _ = supernet.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"], arch)
                mask = b["attention_mask"].bool()
                tokens.append(hidden[mask])
                sentences.append(torch.stack([h[m].mean(0) for h, m in zip(hidden, mask)]) if pooling == "mean"
                                 else hidden[:, 0])
        return torch.cat(tokens), torch.cat(sentences)

    reference = representations(space.largest())
    for arch in (Arch(2, 16, 4, 32, 64), Arch(1, 32, 4, 32, 64)):
        tokens, sentences = representations(arch)
        by_hand = 0.5 * (linear_cka(tokens, reference[0]) + linear_cka(sentences, reference[1]))
        assert fitness(arch) == pytest.approx(by_hand, abs=1e-6) and fitness(arch) < 1.0 - 1e-3

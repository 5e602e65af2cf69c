"""Extracted models are exactly the active sub-networks, load without atb, and never clobber output."""

from __future__ import annotations

import json
import random
import subprocess
import textwrap

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertForMaskedLM

from atb.model.extract import build_masked_lm, extract
from atb.model.supernet_io import load_supernet, save_supernet
from atb.space import Arch, SpaceError
from conftest import PYTHON, REPO, make_supernet, padded_batch


@pytest.mark.parametrize("space,scale_dim", [("tiny", None), ("tiny_kd", None), ("tiny_kd", "source")])
def test_extracted_logits_equal_supernet_logits(space, scale_dim):
    """scale_dim "source": every sub-network scales scores by the largest head size, as a compressed SuperPLM
    does; the export must carry that in its query weights."""
    from atb.space import SearchSpace

    largest = SearchSpace.load(space).largest()
    model = make_supernet(space, attention_scale_dim=largest.head_dim if scale_dim else None)
    ids, mask, types = padded_batch()
    rng = random.Random(1)
    archs = {model.space.sample(rng) for _ in range(40)}
    archs |= {model.space.largest(), model.space.smallest()}
    assert len(archs) >= 20
    assert not scale_dim or any(a.head_dim < largest.head_dim for a in archs)  # the folded scale is exercised
    for arch in sorted(archs):
        with torch.no_grad():
            ref = model(ids, mask, types, arch=arch).logits
            out = build_masked_lm(model, arch)(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        assert out.shape == (3, 12, 100)
        diff = (ref - out).abs().max().item()
        assert diff <= 1e-5, f"{arch.name}: max abs diff {diff}"


def test_sub_networks_really_differ_from_each_other():
    model = make_supernet("tiny")
    ids, mask, types = padded_batch()
    small, large = model.space.smallest(), model.space.largest()
    with torch.no_grad():
        diff = (model(ids, mask, types, arch=small).logits - model(ids, mask, types, arch=large).logits).abs().max()
    assert diff > 1e-2


def test_padding_does_not_leak_into_real_tokens():
    model = make_supernet("tiny_kd")
    ids, mask, types = padded_batch()
    arch = model.space.sample(random.Random(3))
    with torch.no_grad():
        full = model(ids, mask, types, arch=arch).logits
        ids2 = ids.clone()
        ids2[mask == 0] = 7  # change only padded tokens
        changed = model(ids2, mask, types, arch=arch).logits
    assert torch.allclose(full[mask.bool()], changed[mask.bool()], atol=1e-6)


NO_ATB_LOADER = textwrap.dedent("""
    import sys, json, torch
    sys.modules["atb"] = None  # any import of atb now fails
    from transformers import AutoModelForMaskedLM
    folder, batch = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
    model = AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["ids"], attention_mask=batch["mask"], token_type_ids=batch["types"]).logits
    torch.save({"logits": logits, "cls": type(model).__name__}, sys.argv[3])
""")


@pytest.mark.parametrize("space,pooling", [("tiny", "cls"), ("tiny_kd", "cls"), ("tiny", "mean")])
def test_export_loads_in_a_process_without_atb(tmp_path, space, pooling):
    """Vanilla-shaped archs are stock BERT folders unless their classifiers read the mean over tokens."""
    model = make_supernet(space)
    model.config.classifier_pooling = pooling
    rng = random.Random(7)
    arch = next(a for a in iter(lambda: model.space.sample(rng), None) if not a.is_vanilla_bert)
    vanilla = Arch(2, 32, 4, 32, 64)
    ids, mask, types = padded_batch()
    torch.save({"ids": ids, "mask": mask, "types": types}, tmp_path / "batch.pt")
    script = tmp_path / "load.py"
    script.write_text(NO_ATB_LOADER)
    archs = [vanilla] if pooling == "mean" else [arch, vanilla] if space == "tiny" else [arch]
    for a in archs:
        out = extract(model, a, tmp_path / a.name, provenance={"source_checkpoint": "test", "source_step": 5})
        record = json.loads((out / "atb_arch.json").read_text())
        assert record["arch"] == a.to_dict() and record["source_step"] == 5
        assert (out / "model.safetensors").is_file()
        # run from an empty cwd with a clean path so the repo's atb cannot be imported
        subprocess.run([PYTHON, "-I", str(script), str(out), str(tmp_path / "batch.pt"), str(tmp_path / "o.pt")],
                       check=True, cwd=tmp_path, timeout=120)
        got = torch.load(tmp_path / "o.pt", weights_only=True)
        with torch.no_grad():
            ref = model(ids, mask, types, arch=a).logits
        assert (got["logits"] - ref).abs().max() <= 1e-5
        if a.is_vanilla_bert and pooling == "cls":
            assert got["cls"] == "BertForMaskedLM" and record["format"] == "bert"
            assert isinstance(BertForMaskedLM.from_pretrained(out), BertForMaskedLM)
        else:
            config = json.loads((out / "config.json").read_text())
            assert got["cls"] == "TinyBertForMaskedLM" and record["format"] == "atb_tinybert"
            assert config["auto_map"] and config["classifier_pooling"] == pooling


def test_supernet_folder_round_trip(tmp_path):
    model = make_supernet("tiny_kd")
    save_supernet(model, tmp_path / "sp", meta={"step": 11})
    loaded, meta = load_supernet(tmp_path / "sp")
    assert meta["step"] == 11
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    with pytest.raises(FileExistsError):
        save_supernet(model, tmp_path / "sp")


def run_tool(*args, cwd=None):
    return subprocess.run([PYTHON, str(REPO / "tools" / "extract.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_extract_cli_and_its_errors(tmp_path):
    model = make_supernet("tiny")
    save_supernet(model, tmp_path / "sp", meta={"step": 3})
    ok = run_tool("--checkpoint", tmp_path / "sp", "--arch", "L2_H32_A2_Q16_F64", "--out", tmp_path / "m")
    assert ok.returncode == 0, ok.stderr
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "m", trust_remote_code=True)
    assert loaded.config.qkv_size == 16
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    as_json = run_tool("--checkpoint", tmp_path / "sp", "--out", tmp_path / "j",
                       "--arch", '{"layers": 1, "hidden": 32, "heads": 2, "qkv": 16, "ffn": 64}')
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads((tmp_path / "j" / "atb_arch.json").read_text())["arch_name"] == "L1_H32_A2_Q16_F64"

    cases = {
        "existing output": (["--arch", "L2_H32_A2_Q16_F64", "--out", tmp_path / "m"], "already exists"),
        "bad arch": (["--arch", "L2_H33_A2_Q16_F64", "--out", tmp_path / "n"], "hidden=33"),
        "unparsable arch": (["--arch", "big", "--out", tmp_path / "n"], "cannot parse arch"),
        "missing checkpoint": (["--arch", "L2_H32_A2_Q16_F64", "--out", tmp_path / "n"], "not found"),
    }
    for what, (args, needle) in cases.items():
        ckpt = tmp_path / ("nowhere" if what == "missing checkpoint" else "sp")
        res = run_tool("--checkpoint", ckpt, *args)
        assert res.returncode == 2, what
        assert needle in res.stderr and "Traceback" not in res.stderr, (what, res.stderr)
    assert not (tmp_path / "n").exists()
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_corrupt_supernet_weights_give_clear_error(tmp_path):
    save_supernet(make_supernet("tiny"), tmp_path / "sp")
    weights = tmp_path / "sp" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_supernet(tmp_path / "sp")


def test_extract_rejects_arch_outside_space(tmp_path):
    with pytest.raises(SpaceError, match="layers=4"):
        extract(make_supernet("tiny"), Arch(4, 32, 2, 16, 64), tmp_path / "x")
    assert not (tmp_path / "x").exists()

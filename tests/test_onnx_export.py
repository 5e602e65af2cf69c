"""ONNX exports compute what the PyTorch model computes, for every export kind, at any batch and length."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from atb.deploy.onnx_export import INT8_FILE, ONNX_FILE, export_folder, load_served_model, onnx_file
from atb.deploy.runtime import ORT_FP32, ORT_INT8, open_session
from atb.model.extract import extract
from atb.space import Arch
from conftest import make_supernet

pytest.importorskip("onnxruntime")

VANILLA = Arch(2, 32, 4, 32, 64)
TINYBERT = Arch(2, 32, 2, 16, 64)
SHAPES = ((1, 12), (3, 12), (1, 20), (3, 20))  # two batch sizes x two lengths, one file


def _head_model(mlm_folder, head: str):
    from transformers import BertForQuestionAnswering, BertForSequenceClassification

    from atb.model import tiny

    classes = {"classifier": (BertForSequenceClassification, tiny.TinyBertForSequenceClassification),
               "qa": (BertForQuestionAnswering, tiny.TinyBertForQuestionAnswering)}
    stock = json.loads((mlm_folder / "config.json").read_text())["model_type"] == "bert"
    cls = classes[head][0 if stock else 1]
    model = cls.from_pretrained(str(mlm_folder), **({"num_labels": 3} if head == "classifier" else {}))
    torch.manual_seed(1)
    with torch.no_grad():  # a freshly initialised head is near zero; make its outputs count
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def make_export(root, arch: Arch, head: str, pooling: str = "cls"):
    """An exported folder like extract (encoder) or fine-tuning (classifier, QA) writes."""
    supernet = make_supernet("tiny")
    supernet.config.classifier_pooling = pooling
    mlm = extract(supernet, arch, root / f"{arch.name}_mlm")
    if head == "encoder":
        return mlm
    folder = root / f"{arch.name}_{head}"
    _head_model(mlm, head).save_pretrained(str(folder), safe_serialization=True)
    shutil.copyfile(mlm / "atb_arch.json", folder / "atb_arch.json")
    return folder


def padded(batch: int, seq: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - 3:] = 0  # the first row is padded (also when batch is 1)
    ids[mask == 0] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    return ids, mask, types


def assert_parity(folder, runtime=ORT_FP32, atol=1e-4):
    model, head = load_served_model(folder)
    session, _ = open_session(onnx_file(folder, runtime))
    names = [o.name for o in session.get_outputs()]
    worst = 0.0
    for batch, seq in SHAPES:
        ids, mask, types = padded(batch, seq)
        with torch.no_grad():
            ref = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                 "token_type_ids": types.numpy()})
        for name, value in zip(names, got):
            assert value.shape == tuple(ref[name].shape), (name, batch, seq)
            worst = max(worst, float(np.abs(value - ref[name].numpy()).max()))
    assert worst <= atol, f"{folder.name} {runtime}: max abs diff {worst}"
    return head


# TinyBert's classifier is checked by the int8 test below; two more kinds only in the slow suite
CASES = [(VANILLA, "classifier"), (TINYBERT, "encoder"), (TINYBERT, "qa"),
         pytest.param(VANILLA, "encoder", marks=pytest.mark.slow), pytest.param(VANILLA, "qa", marks=pytest.mark.slow)]


@pytest.mark.parametrize("arch,head", CASES)
def test_onnx_fp32_equals_pytorch(tmp_path, arch, head):
    folder = make_export(tmp_path, arch, head)
    record = export_folder(folder, int8=False)
    assert record["head"] == head and record["opset"] >= 17 and record["int8"] is None
    assert json.loads((folder / "atb_arch.json").read_text())["onnx"] == record
    assert assert_parity(folder) == head


def test_a_mean_pooling_classifier_exports_with_its_padding_mask(tmp_path):
    folder = make_export(tmp_path, VANILLA, "classifier", pooling="mean")
    export_folder(folder, int8=False)
    assert assert_parity(folder) == "classifier"


def test_int8_loads_runs_and_stays_close(tmp_path):
    folder = make_export(tmp_path, TINYBERT, "classifier")
    record = export_folder(folder, int8=True)
    assert record["int8"] == INT8_FILE and (folder / INT8_FILE).is_file()
    assert assert_parity(folder) == "classifier"
    model, _ = load_served_model(folder)
    session, options = open_session(onnx_file(folder, ORT_INT8), threads=1)
    assert options["intra_op_threads"] == 1 and options["provider"] == "CPUExecutionProvider"
    ids, mask, types = padded(3, 20)
    logits = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                "token_type_ids": types.numpy()})[0]
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
    assert logits.shape == ref.shape and np.isfinite(logits).all()
    assert 0 < np.abs(logits - ref).max() < 0.1 * np.abs(ref).max() + 0.05  # quantized: close, not equal
    import onnx

    # every quantized matrix product has a weight zero point (and scale) per output channel, as recorded
    graph = onnx.load(str(folder / INT8_FILE)).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    products = [n for n in graph.node if n.op_type == "MatMulInteger"]
    assert products and record["quantization"]["per_channel"]
    assert all(len(dims[n.input[3]]) == 1 and dims[n.input[3]][0] > 1 for n in products)


def test_stale_missing_and_existing_exports_are_clear_errors(tmp_path):
    folder = make_export(tmp_path, VANILLA, "encoder")
    with pytest.raises(FileNotFoundError, match="export_onnx.py"):
        onnx_file(folder)
    export_folder(folder, int8=False)
    with pytest.raises(FileNotFoundError, match="--int8 true"):
        onnx_file(folder, ORT_INT8)
    before = (folder / ONNX_FILE).read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_folder(folder, int8=False)
    assert (folder / ONNX_FILE).read_bytes() == before
    model, _ = load_served_model(folder)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(2.0)
    model.save_pretrained(str(folder), safe_serialization=True)  # new weights, old ONNX file
    with pytest.raises(ValueError, match="stale"):
        onnx_file(folder)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")], "temp files left behind"


def test_missing_runtime_package_names_the_extra(monkeypatch):
    import sys

    from atb.deploy.runtime import require

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ValueError, match=r"atb\[onnx\]"):
        require("onnxruntime")


def test_export_tool_user_errors(tmp_path):
    import subprocess

    from conftest import PYTHON, REPO

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / ONNX_FILE).write_text("not mine")
    res = subprocess.run([PYTHON, str(REPO / "tools" / "export_onnx.py"), "--folder", str(folder)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert (folder / ONNX_FILE).read_text() == "not mine"
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_folder(tmp_path / "nowhere")

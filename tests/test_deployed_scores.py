"""`--deploy`: a fine-tuned model exported to ONNX beside its weights and scored on ONNX Runtime by the same
code that scores it in PyTorch. The fp32 graph computes the PyTorch model's function, so its scores must be the
PyTorch scores: that is the reference for the classifier, regressor and QA paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from finetune_setup import fast_cfg
from synthetic_tasks import (contradicting_copy, write_mrpc_task, write_regression_task, write_squad_task,
                             write_sst2_task)

from atb.deploy.onnx_export import ARCH_JSON, INT8_FILE, onnx_file
from atb.deploy.runtime import ORT_FP32, ORT_INT8
from atb.finetune import FinetuneConfig, finetune
from atb.finetune.config import check_inputs

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("kind", ["pair", "regression", "qa"])
def test_the_onnx_fp32_deployment_scores_what_the_pytorch_model_scores(exports, tmp_path, kind):
    write, export, extra = {"pair": (write_mrpc_task, "tinybert", {}),
                            "regression": (write_regression_task, "bert", {}),
                            "qa": (write_squad_task, "tinybert", {"doc_stride": 8})}[kind]
    task = write(tmp_path / kind) if kind != "qa" else write(tmp_path / kind, n_train=100, n_dev=20)
    out = tmp_path / "out"
    record = finetune(fast_cfg(exports[export], task, out, epochs=2, deploy=ORT_FP32, **extra))

    deployed = record["deployed"]
    assert deployed["runtime"] == ORT_FP32 and set(deployed) == {"runtime", "dev"}
    assert deployed["dev"] == pytest.approx(record["dev"], abs=1e-4)
    assert json.loads((out / "metrics.json").read_text())["deployed"] == deployed
    assert onnx_file(out / "model", ORT_FP32).is_file()  # recorded, and made from the published weights
    assert json.loads((out / "model" / ARCH_JSON).read_text())["onnx"]["int8"] is None


def test_the_int8_deployment_is_written_and_scored_near_the_pytorch_model(exports, tmp_path):
    task = write_sst2_task(tmp_path / "sst2")
    out = tmp_path / "out"
    record = finetune(fast_cfg(exports["tinybert"], task, out, epochs=8, deploy=ORT_INT8))
    assert record["dev"]["accuracy"] >= 0.9
    assert record["deployed"]["runtime"] == ORT_INT8
    assert record["deployed"]["dev"]["accuracy"] >= record["dev"]["accuracy"] - 0.1  # quantized, not broken
    assert onnx_file(out / "model", ORT_INT8) == out / "model" / INT8_FILE

    # served as the README shows, with onnxruntime and the folder's tokenizer alone, it scores the same
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from atb.finetune.tasks import load_task

    dev = load_task(fast_cfg(exports["tinybert"], task, out)).splits["dev"]
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"), trust_remote_code=True)
    session = ort.InferenceSession(str(out / "model" / INT8_FILE), providers=["CPUExecutionProvider"])
    batch = tokenizer(list(dev["text_a"]), padding=True, truncation=True, max_length=32, return_tensors="np")
    logits = session.run(["logits"], {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})[0]
    served = float((logits.argmax(-1) == np.asarray(dev["label"])).mean())
    assert served == pytest.approx(record["deployed"]["dev"]["accuracy"])


def test_two_ranks_fine_tune_from_a_teacher_and_the_main_one_deploys(exports, tmp_path):
    """torchrun with two CPU ranks under a DeepSpeed config, learning from a teacher's outputs alone (the labels
    contradict the task: see test_distill.py): rank 0 exports and scores while the other waits, and the tool
    reports once."""
    from launching import run_tool

    task, out = write_sst2_task(tmp_path / "sst2"), tmp_path / "out"
    finetune(fast_cfg(exports["tinybert"], task, tmp_path / "teacher", epochs=6))
    wrong = contradicting_copy(task, "classification", tmp_path / "wrong")
    proc = run_tool("finetune", ["--model", exports["tinybert"], "--task", wrong, "--out_dir", out, "--epochs", 6,
                                 "--max_seq_len", 32, "--lr", 3e-3, "--batch_size", 8, "--warmup_ratio", 0,
                                 "--ds_config", "zero2_fp32", "--deploy", ORT_INT8,
                                 "--teacher", tmp_path / "teacher" / "model", "--kd_alpha", 1], nproc=2)
    assert proc.stdout.count("fine-tuned wrong") == 1
    record = json.loads((out / "metrics.json").read_text())
    assert record["dev"]["accuracy"] >= 0.9 and record["train"]["steps"] == 6 * 240 // (8 * 2)
    assert record["deployed"]["dev"]["accuracy"] >= record["dev"]["accuracy"] - 0.1
    assert onnx_file(out / "model", ORT_INT8).is_file()


def test_runs_over_several_seeds_are_summarised_as_deployed_too(exports, tmp_path):
    task = write_sst2_task(tmp_path / "sst2", n_train=48, n_dev=24)
    summary = finetune(fast_cfg(exports["bert"], task, tmp_path / "out", epochs=2, seeds=[0, 1], deploy=ORT_FP32))
    deployed = summary["deployed"]
    assert deployed["runtime"] == ORT_FP32 and deployed["dev"] == pytest.approx(summary["dev"], abs=1e-4)
    assert deployed["dev_std"] == pytest.approx(summary["dev_std"], abs=1e-4)
    assert [run["deployed"]["dev"] for run in summary["runs"]] == [
        json.loads((tmp_path / "out" / f"seed_{s}" / "metrics.json").read_text())["deployed"]["dev"] for s in (0, 1)]


def test_a_deployment_that_fails_after_training_keeps_the_trained_model_and_says_so(exports, tmp_path, monkeypatch):
    import atb.finetune.runner as runner

    def export_fails(*args, **kwargs):
        raise ValueError("ONNX export of the classifier model failed: an operator the exporter lacks")

    monkeypatch.setattr(runner, "evaluate_deployed", export_fails)
    out = tmp_path / "out"
    cfg = fast_cfg(exports["bert"], write_sst2_task(tmp_path / "sst2"), out, epochs=1, deploy=ORT_FP32)
    with pytest.raises(ValueError, match="--deploy onnxruntime failed: ONNX export .* model and its PyTorch scores"):
        finetune(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    assert "accuracy" in saved["dev"] and "operator the exporter lacks" in saved["deployed"]["error"]
    assert (out / "model" / "model.safetensors").is_file()
    with pytest.raises(FileExistsError, match="pass --overwrite"):  # a rerun does not take it for a finished run
        finetune(cfg)


def test_a_fine_tuned_folder_does_not_inherit_the_onnx_record_of_its_source(exports, tmp_path):
    """The source's ONNX files hold the source's weights and are not copied: its record must not be either."""
    import shutil

    from atb.deploy.onnx_export import export_folder

    source = Path(shutil.copytree(exports["bert"], tmp_path / "source"))
    export_folder(source, int8=False)
    out = tmp_path / "out"
    finetune(fast_cfg(source, write_sst2_task(tmp_path / "sst2", n_train=24, n_dev=12), out, epochs=1))
    record = json.loads((out / "model" / ARCH_JSON).read_text())
    assert "onnx" not in record and record["arch_name"] == json.loads((source / ARCH_JSON).read_text())["arch_name"]


@pytest.mark.parametrize("deploy, model, message", [
    ("onnx", "model", "--deploy must be one of"),
    (ORT_INT8, "tfidf", "tfidf baseline has no neural model"),
])
def test_a_deployment_that_cannot_be_made_is_refused_before_training(tmp_path, deploy, model, message):
    cfg = FinetuneConfig(model=model, task="movie_sentiment", out_dir=str(tmp_path / "out"), deploy=deploy)
    with pytest.raises(ValueError, match=message):
        check_inputs(cfg)

"""Latency on the serving runtime: ORT measurements, runtime-tagged tables and predictors, mismatch errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

from atb.deploy.latency import measure_folder_latency
from atb.deploy.onnx_export import export_folder
from atb.latency import LatencyPredictor, MeasureSettings, measure_latency, sample_archs
from atb.latency.jobs import FitConfig, PredictConfig, run_fit, run_predict
from atb.latency.measure import summarize
from atb.latency.table import append_row, make_row, read_table
from atb.space import Arch, SearchSpace

pytest.importorskip("onnxruntime")

QUICK = MeasureSettings(seq=16, warmup=1, repeats=3, min_time_s=0.0, probe=False)


@pytest.fixture(autouse=True)
def probe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATB_PROBE_CACHE", str(tmp_path / "probe_cache.json"))


@pytest.mark.parametrize("runtime", [pytest.param("onnxruntime", marks=pytest.mark.slow), "onnxruntime-int8"])
def test_measure_on_onnxruntime_records_the_session_options(runtime):
    space = SearchSpace.load("tiny")
    settings = dataclasses.replace(QUICK, runtime=runtime)
    m = measure_latency(Arch(2, 32, 2, 16, 64), settings=settings)
    assert m.repeats == 3 and m.median_ms > 0
    row = make_row(Arch(2, 32, 2, 16, 64), space, settings, m, 30522)
    assert row["settings"]["runtime"] == runtime
    ort = row["device"]["onnxruntime"]
    assert ort["intra_op_threads"] == 1 and ort["provider"] == "CPUExecutionProvider"
    assert ort["graph_optimization"] == "ORT_ENABLE_ALL"


def test_runtime_settings_errors():
    with pytest.raises(ValueError, match="runtime must be one of"):
        MeasureSettings(runtime="tensorrt")
    with pytest.raises(ValueError, match="device cpu with dtype float32"):
        MeasureSettings(runtime="onnxruntime", dtype="bfloat16")
    assert MeasureSettings().identity()["runtime"] == "torch"


def _table(path, runtime: str | None, n: int = 12):
    space = SearchSpace.load("demo")
    settings = dataclasses.replace(MeasureSettings(probe=False), runtime=runtime or "torch")
    for i, arch in enumerate(sample_archs(space, n, seed=1)):
        ms = 0.2 + arch.layers * arch.hidden * (arch.qkv + arch.ffn) * 1e-6
        row = make_row(arch, space, settings, summarize([ms * 0.99, ms, ms * 1.01]), 30522)
        if runtime is None:  # a table written before runtimes existed
            del row["settings"]["runtime"]
        append_row(path, row)
    return path


def test_tables_and_predictors_carry_their_runtime(tmp_path):
    int8 = _table(tmp_path / "int8.jsonl", "onnxruntime-int8")
    with pytest.raises(ValueError, match="measured on runtime 'onnxruntime-int8', but runtime 'torch'"):
        run_fit(FitConfig(table=str(int8), out=str(tmp_path / "p"), runtime="torch", plot=False))
    assert not (tmp_path / "p").exists()
    run_fit(FitConfig(table=str(int8), out=str(tmp_path / "p"), runtime="onnxruntime-int8", plot=False, ensemble=1,
                      ridge=1e-2))
    assert LatencyPredictor.load(tmp_path / "p").runtime == "onnxruntime-int8"
    ok = run_predict(PredictConfig(predictor=str(tmp_path / "p"), archs=["L2_H128_A2_Q128_F512"],
                                   runtime="onnxruntime-int8"))
    assert ok["archs"][0]["ms"] > 0
    with pytest.raises(ValueError, match="runtime 'onnxruntime' was asked"):
        run_predict(PredictConfig(predictor=str(tmp_path / "p"), archs=["L2_H128_A2_Q128_F512"],
                                  runtime="onnxruntime"))
    old = _table(tmp_path / "old.jsonl", None)
    assert {r["settings"]["runtime"] for r in read_table(old)} == {"torch"}


def test_folder_latency_on_each_runtime_and_stale_refused(tmp_path):
    from test_onnx_export import TINYBERT, make_export

    folder = make_export(tmp_path, TINYBERT, "classifier")
    export_folder(folder, int8=True)
    for runtime in ("torch", "onnxruntime", "onnxruntime-int8"):
        m = measure_folder_latency(folder, runtime, QUICK)
        assert m.median_ms > 0 and m.repeats == 3, runtime
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # same bytes: still fresh
    measure_folder_latency(folder, "onnxruntime", QUICK)
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state["classifier.bias"] = state["classifier.bias"] + 1
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="stale"):
        measure_folder_latency(folder, "onnxruntime-int8", QUICK)


def _predictor(runtime: str, seq: int = 16):
    from atb.latency.predictor import FitOptions

    space = SearchSpace.load("tiny")
    archs = sample_archs(space, 10, seed=2)
    ms = [0.05 + a.layers * a.hidden * (a.qkv + a.ffn) * 1e-6 for a in archs]
    settings = dataclasses.replace(MeasureSettings(seq=seq), runtime=runtime).identity()
    return LatencyPredictor.fit(archs, ms, space.to_spec(), settings, options=FitOptions(ensemble=1, ridge=1e-2))


def test_search_refuses_a_predictor_of_another_runtime(tmp_path):
    from atb.search.targets import load_predictor

    _predictor("onnxruntime-int8").save(tmp_path / "p")
    assert load_predictor(str(tmp_path / "p"), 16, "onnxruntime-int8").runtime == "onnxruntime-int8"
    with pytest.raises(ValueError, match="measured on runtime 'onnxruntime-int8', but runtime 'torch'"):
        load_predictor(str(tmp_path / "p"), 16, "torch")
    with pytest.raises(ValueError, match="not the FLOPs proxy"):
        load_predictor("flops", 16, "onnxruntime")


def test_develop_measures_on_the_predictors_runtime_and_flags_a_missed_target(tmp_path):
    from atb.train.develop_export import latency_check, summary_table
    from test_onnx_export import TINYBERT, make_export

    folder = make_export(tmp_path, TINYBERT, "encoder")
    int8 = _predictor("onnxruntime-int8")
    predicted = float(int8.predict([TINYBERT])[0])
    missed = latency_check(folder, "0.001ms", predicted, int8)  # a budget no model meets
    assert missed["runtime"] == "onnxruntime-int8" and missed["measured_ms"] > 0 and missed["misses_target"]
    assert missed["target_ms"] == 0.001
    assert missed["prediction_error"] == pytest.approx(missed["measured_ms"] / predicted - 1, abs=1e-4)
    record = json.loads((folder / "atb_arch.json").read_text())["onnx"]
    assert record["int8"] == "model.int8.onnx" and (folder / "model.int8.onnx").is_file()
    met = latency_check(folder, "1000ms", None, _predictor("torch"))
    assert met["runtime"] == "torch" and not met["misses_target"] and met["prediction_error"] is None
    label = latency_check(folder, "4x (BERT-ratio)", None, _predictor("torch"))  # a label, not a latency
    assert label["target_ms"] is None and not label["misses_target"] and label["measured_ms"] > 0
    rows = [{**base, "arch_name": name, "target": target, "params": 1e6, "flops": 1e9, "predicted_ms": predicted,
             "speedup_vs_largest": None, "dev_loss": None}
            for name, target, base in (("A", "0.001ms", missed), ("B", "1000ms", met))]
    table = summary_table(rows)
    assert "MISSES" in table and "| ok (" in table and "target missed" in table and "A" in table.split("missed")[-1]

"""Latency: measurement on exported models, the JSONL table, targets, the jobs and the CLI (the predictor's fit is
in test_latency_predictor.py)."""

from __future__ import annotations

import json
import subprocess
import warnings

import numpy as np
import pytest
import torch

from atb.latency import LatencyPredictor, MeasureSettings, measure_latency, parse_target, sample_archs
from atb.latency.jobs import FitConfig, MeasureConfig, PredictConfig, run_fit, run_measure, run_predict
from atb.latency.measure import summarize
from atb.latency.metrics import noise_floor
from atb.latency.predictor import RIDGE_GRID
from atb.latency.table import append_row, latencies, read_table
from atb.model.elastic import SuperBertConfig
from atb.space import Arch, SearchSpace, SpaceError
from conftest import PYTHON, REPO
from latency_synthetic import synthetic_ms, synthetic_rows


@pytest.fixture(autouse=True)
def probe_cache(tmp_path, monkeypatch):
    """Measurements remember the machine's quiet probe time; keep that out of the user's home."""
    path = tmp_path / "probe_cache.json"
    monkeypatch.setenv("ATB_PROBE_CACHE", str(path))
    return path


# ---- targets -----------------------------------------------------------------------------------------
class _FlopsLike:
    """A stand-in predictor with an exactly known answer."""

    units = "ms"

    def predict(self, archs):
        return np.array([synthetic_ms(a) for a in archs])


def test_parse_target_ms_and_speedups():
    space = SearchSpace.load("mlm")
    p = _FlopsLike()
    assert parse_target("12ms", p, space) == 12.0
    assert parse_target(" 12.5 ms ", p, space) == 12.5
    assert parse_target("12", p, space) == 12.0  # a bare number is in the predictor's units
    assert parse_target("4x", p, space) == pytest.approx(synthetic_ms(space.largest()) / 4)
    assert parse_target("2X", p, "mlm", reference="L4_H512_A8_Q512_F2048") == pytest.approx(
        synthetic_ms(Arch(4, 512, 8, 512, 2048)) / 2)
    with pytest.warns(UserWarning, match="outside space 'mlm'"):
        ms = parse_target("4x", p, space, reference="bert-base")
    assert ms == pytest.approx(synthetic_ms(Arch(12, 768, 12, 768, 3072)) / 4)
    for bad in ["fast", "4xx", "-3ms", "0x", "ms", ""]:
        with pytest.raises(ValueError, match="latency target"):
            parse_target(bad, p, space)
    with pytest.raises(ValueError, match="unknown reference arch 'gpt-2'"):
        parse_target("4x", p, space, reference="gpt-2")


# ---- measurement ------------------------------------------------------------------------------------
def test_largest_arch_measures_slower_than_smallest_and_threads_are_restored(probe_cache):
    space = SearchSpace.load("demo")
    settings = MeasureSettings(seq=32, warmup=2, repeats=5, min_time_s=0.0, clock="auto", probe=True)
    torch.set_num_threads(2)
    try:
        big = measure_latency(space.largest(), settings=settings)
        small = measure_latency(space.smallest(), settings=settings)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert big.median_ms > 2 * small.median_ms, (big, small)
    for m in (big, small):
        assert m.repeats >= 5 and m.p10_ms <= m.median_ms <= m.p90_ms
        assert m.raw_median_ms > 0 and m.wall_median_ms > 0 and m.probe_ms > 0
    remembered = json.loads(probe_cache.read_text())
    assert [k for k in remembered if "threads 1 | clock cpu" in k]
    assert min(remembered.values()) == pytest.approx(min(big.probe_ms, small.probe_ms), rel=1e-3)


def test_measure_defaults_to_the_wall_clock_without_probe_or_cache(tmp_path, probe_cache):
    """What a user's table holds must not depend on what ran on the machine before: no probe, no cache."""
    out = tmp_path / "t.jsonl"
    proc = subprocess.run([PYTHON, "tools/latency.py", "measure", "--space", "tiny", "--archs", "L1_H16_A1_Q8_F16",
                           "--seq", "8", "--warmup", "1", "--repeats", "3", "--min_time_s", "0", "--progress", "false",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = read_table(out)
    assert row["settings"]["clock"] == "wall" and row["settings"]["probe"] is False
    assert row["probe_ms"] is None and row["median_ms"] == pytest.approx(row["wall_median_ms"], rel=0.1)
    assert not probe_cache.exists()


def test_wall_clock_without_probe_and_setting_errors():
    m = measure_latency(Arch(1, 16, 1, 8, 16), settings=MeasureSettings(seq=8, warmup=1, repeats=3, min_time_s=0.0))
    assert m.repeats == 3 and m.probe_ms is None
    with pytest.raises(ValueError, match="clock='cpu'"):
        MeasureSettings(threads=2, clock="cpu")
    with pytest.raises(ValueError, match="device must be"):
        MeasureSettings(device="tpu")
    assert MeasureSettings(threads=2).resolved_clock == "wall"
    with pytest.raises(ValueError, match="exceeds max_position_embeddings"):
        measure_latency(Arch(1, 16, 1, 8, 16), SuperBertConfig(space={}, max_position_embeddings=64),
                        MeasureSettings(seq=128))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_event_timing():
    space = SearchSpace.load("demo")
    settings = MeasureSettings(device="cuda", warmup=2, repeats=5, min_time_s=0.0)
    big = measure_latency(space.largest(), settings=settings)
    small = measure_latency(space.smallest(), settings=settings)
    assert big.median_ms > small.median_ms > 0


def test_sampling_is_stratified_deterministic_and_in_space():
    space = SearchSpace.load("mlm")
    archs = sample_archs(space, 40, seed=5)
    assert archs == sample_archs(space, 40, seed=5)
    assert archs[:2] == [space.largest(), space.smallest()]
    assert len(set(archs)) == 40 and all(space.contains(a) for a in archs)
    assert {a.layers for a in archs} == set(space.layers.values())  # 40 strata over 8 layer values
    for field, rng in (("hidden", space.hidden), ("ffn", space.ffn)):
        values = sorted(getattr(a, field) for a in archs)
        gaps = np.diff([rng.min, *values, rng.max])
        assert gaps.max() < 3 * (rng.max - rng.min) / 40, field  # no large uncovered stretch
    assert any(a.is_vanilla_bert for a in archs[2:])
    with pytest.raises(ValueError, match="holds only"):
        sample_archs(SearchSpace.load("tiny"), 10**6)


# ---- the table, resuming, bad input -----------------------------------------------------------------
def _fake_measure(calls):
    def fake(arch, model_config=None, settings=None, seed=0):
        calls.append(arch)
        return summarize([synthetic_ms(arch)] * 3)
    return fake


def test_measure_job_resumes_and_refuses_other_settings(tmp_path, monkeypatch):
    calls: list[Arch] = []
    monkeypatch.setattr("atb.latency.jobs.measure_latency", _fake_measure(calls))
    out = tmp_path / "t.jsonl"
    cfg = MeasureConfig(space="tiny", n=6, seq=16, out=str(out), progress=False)
    rows = run_measure(cfg)
    assert len(rows) == 6 and len(calls) == 6
    rows = run_measure(cfg)
    assert len(rows) == 6 and len(calls) == 6  # nothing re-measured
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # a run killed mid-write
    with pytest.warns(UserWarning, match="incomplete last line"):
        rows = run_measure(cfg)
    assert len(calls) == 7 and len(read_table(out)) == 6  # the torn arch measured again, file whole
    with pytest.raises(ValueError, match="other settings"):
        run_measure(MeasureConfig(space="tiny", n=6, seq=32, out=str(out), progress=False))
    with pytest.raises(ValueError, match="belongs to space 'tiny'"):
        run_measure(MeasureConfig(space="tiny_kd", n=6, seq=16, out=str(out), progress=False))


def test_bad_inputs_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr("atb.latency.jobs.measure_latency", _fake_measure([]))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        run_fit(FitConfig(table=str(empty), out=str(tmp_path / "p")))
    with pytest.raises(FileNotFoundError, match="latency table not found"):
        run_fit(FitConfig(table=str(tmp_path / "nope.jsonl"), out=str(tmp_path / "p")))
    with pytest.raises(SpaceError, match="unknown space 'nope'"):
        run_measure(MeasureConfig(space="nope", out=str(tmp_path / "x.jsonl"), progress=False))
    with pytest.raises(SpaceError, match="layers=9 is outside space 'tiny'"):
        run_measure(MeasureConfig(space="tiny", archs=["L9_H16_A1_Q8_F16"], out=str(tmp_path / "x.jsonl")))
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"not": "a row"}\n{"arch": 1}\n')
    with pytest.raises(ValueError, match="line 1 is not a latency row"):
        read_table(corrupt)
    small = tmp_path / "small.jsonl"
    space = SearchSpace.load("tiny")
    for row in synthetic_rows(space, sample_archs(space, 4)):
        append_row(small, row)
    with pytest.raises(ValueError, match="too small to hold out"):
        run_fit(FitConfig(table=str(small), out=str(tmp_path / "p")))


def test_fit_and_predict_jobs_end_to_end(tmp_path):
    space = SearchSpace.load("demo")
    table = tmp_path / "demo.jsonl"
    for row in synthetic_rows(space, sample_archs(space, 40, seed=4), noise=0.01):
        append_row(table, row)
    out = tmp_path / "pred"
    metrics = run_fit(FitConfig(table=str(table), out=str(out), ensemble=1))  # ridge cross-validated
    assert {"predictor", "linear"} == set(metrics["test"]) and metrics["n_test"] == 10
    assert metrics["ridge"] in RIDGE_GRID and LatencyPredictor.load(out).ridge == metrics["ridge"]
    assert (out / "fit.png").stat().st_size > 10_000
    with pytest.raises(FileExistsError):
        run_fit(FitConfig(table=str(table), out=str(out)))
    result = run_predict(PredictConfig(predictor=str(out), archs=["L2_H128_A2_Q128_F512"], targets=["2x", "3ms"]))
    largest_ms = result["reference"]["ms"]
    assert result["reference"]["arch"] == space.largest().name
    assert result["archs"][0]["speedup"] == pytest.approx(largest_ms / result["archs"][0]["ms"])
    assert result["targets"] == {"2x": pytest.approx(largest_ms / 2), "3ms": 3.0}
    with pytest.raises(SpaceError, match="outside space 'demo'"):
        run_predict(PredictConfig(predictor=str(out), archs=["L6_H128_A2_Q128_F512"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an in-space reference is predicted silently
        run_predict(PredictConfig(predictor=str(out), archs=["L2_H128_A2_Q128_F512"], reference="bert-mini"))


def test_probe_normalised_rows_share_one_scale():
    space = SearchSpace.load("tiny")
    rows = synthetic_rows(space, [space.largest(), space.smallest()])
    rows[0]["probe_ms"], rows[1]["probe_ms"] = 1.0, 1.25  # the second was normalised to a noisier probe
    _, values = latencies(rows)
    assert values == pytest.approx([rows[0]["median_ms"], rows[1]["median_ms"] * 0.8])
    assert noise_floor(rows)["median_relative_spread"] == pytest.approx(0.032, rel=1e-3)  # (1.016 - 0.984) / 1


def test_cli_reports_bad_input_in_one_line(tmp_path):
    proc = subprocess.run([PYTHON, "tools/latency.py", "fit", "--table", str(tmp_path / "none.jsonl"),
                           "--out", str(tmp_path / "p")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("latency fit: error: latency table not found")

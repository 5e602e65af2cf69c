"""Re-running a finished job says "already complete" and leaves its outputs byte-identical; a run killed
between its last checkpoint and its summary redoes its final evaluation and exports whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launching import run_tool, tiny_pretrain_args


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_finished_summary_needs_the_last_step_and_a_matching_latest(tmp_path):
    from atb.train.checkpointing import COMPLETE
    from atb.train.completion import finished_summary

    (tmp_path / "summary.json").write_text(json.dumps({"last_step": 6, "final_eval": {"dev/loss": 1.0}}))
    assert finished_summary(tmp_path, 6) is None  # no checkpoint
    ckpt = tmp_path / "checkpoints"
    (ckpt / "step00000006").mkdir(parents=True)
    (ckpt / "step00000006" / COMPLETE).write_text(json.dumps({"files": {}}))
    (ckpt / "latest").write_text("step00000006")
    assert finished_summary(tmp_path, 6)["final_eval"] == {"dev/loss": 1.0}
    assert finished_summary(tmp_path, 8) is None  # asked for more steps: training continues
    (tmp_path / "summary.json").write_text('{"last_step": 6, "fin')  # torn: not finished, resume decides
    assert finished_summary(tmp_path, 6) is None


@pytest.fixture(scope="module")
def plm(tmp_path_factory):
    from test_recorded_data import build_superplm

    return build_superplm(tmp_path_factory.mktemp("plm"))


def test_a_finished_search_is_already_complete(plm, tmp_path, capsys):
    from test_recorded_data import search_cfg

    from atb.search import run_search

    first = run_search(search_cfg(plm, tmp_path / "s"))
    before = tree(tmp_path / "s")
    again = run_search(search_cfg(plm, tmp_path / "s"))
    assert "already complete" in capsys.readouterr().out
    assert tree(tmp_path / "s") == before and again == first


@pytest.mark.slow  # four tiny pre-training runs: ~2-3 min on 2 busy cores
def test_a_finished_pretraining_is_already_complete_and_an_interrupted_export_is_redone(tmp_path):
    out = tmp_path / "run"
    args = tiny_pretrain_args(tmp_path, out)
    run_tool("pretrain", args)
    finished = tree(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_eval"]
    proc = run_tool("pretrain", args)
    assert "already complete" in proc.stdout and tree(out) == finished

    # killed during the export: checkpoint at the last step, no summary, a half export
    (out / "summary.json").unlink()
    (out / "supernet" / "model.safetensors").unlink()
    run_tool("pretrain", args)
    redone = json.loads((out / "summary.json").read_text())
    assert redone["final_eval"] == summary["final_eval"] and redone["last_step"] == 3
    assert (out / "supernet" / "model.safetensors").read_bytes() == finished["supernet/model.safetensors"]

    run_tool("pretrain", [*args, "--overwrite", "true"])  # redoes evaluation and export, same figures
    assert json.loads((out / "summary.json").read_text())["final_eval"] == summary["final_eval"]

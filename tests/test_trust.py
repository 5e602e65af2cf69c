"""Nothing a checkpoint or model folder carries runs as code unless the user says they trust it: a crafted
pickle in a DeepSpeed checkpoint dir and an edited modeling file are refused, and the marker file their
code would create never appears."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, REPO, make_supernet

from atb.space import Arch


class _RunsCode:
    """Pickles as a call that creates a marker file, as a crafted checkpoint would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def crafted_checkpoint(root: Path, marker: Path) -> Path:
    """An atb DeepSpeed checkpoint dir, complete by its record, whose model states file runs code."""
    folder = root / "step00000001"
    folder.mkdir(parents=True)
    torch.save({"module": {}, "payload": _RunsCode(marker)}, folder / "mp_rank_00_model_states.pt")
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    record = {"supernet_config": make_supernet().config.to_dict(), "step": 1, "world_size": 1, "files": files}
    (folder / "atb_complete.json").write_text(json.dumps(record))
    (root / "latest").write_text("step00000001")
    return root


def test_a_crafted_checkpoint_pickle_is_refused_and_runs_nothing(tmp_path):
    from atb.train.consolidate import load_supernet_or_checkpoint
    from atb.train.checkpointing import CheckpointError

    marker = tmp_path / "marker"
    ckpt = crafted_checkpoint(tmp_path / "checkpoints", marker)
    with pytest.raises(CheckpointError, match="trust_checkpoint"):
        load_supernet_or_checkpoint(ckpt)
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "extract.py"), "--checkpoint", str(ckpt), "--arch",
                           "L1_H32_A2_Q16_F48", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "mp_rank_00_model_states.pt" in proc.stderr and "--trust_checkpoint true" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_restricted_loads_stop_a_pickle_the_scan_did_not_see(tmp_path):
    """Inside `restricted_loads` even a plain torch.load(weights_only=False), as DeepSpeed calls it, refuses."""
    from atb.train.checkpointing import CheckpointError
    from atb.train.trusted_load import restricted_loads

    marker = tmp_path / "marker"
    torch.save(_RunsCode(marker), tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="trust_checkpoint"), restricted_loads():
        torch.load(tmp_path / "x.pt", weights_only=False)
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # torch's switch is restored afterwards


def test_a_damaged_checkpoint_file_names_itself(tmp_path):
    from atb.train.checkpointing import CheckpointError
    from atb.train.trusted_load import check_pickles

    torch.save({"w": torch.ones(4)}, tmp_path / "states.pt")
    data = bytearray((tmp_path / "states.pt").read_bytes())
    data[:64] = bytes(64)  # same size, zip header gone
    (tmp_path / "states.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="states.pt is corrupt"):
        check_pickles(tmp_path)


@pytest.fixture(scope="module")
def tinybert_export(tmp_path_factory):
    from atb.model.extract import extract

    return extract(make_supernet("tiny"), Arch(2, 48, 2, 16, 96), tmp_path_factory.mktemp("e") / "tinybert")


def test_atb_exports_record_their_modeling_hash_and_load_without_the_flag(tinybert_export, tmp_path):
    from atb.finetune.remote_code import allow_remote_code
    from atb.fsutil import file_sha256
    from atb.model.extract import MODELING_FILE, extract

    record = json.loads((tinybert_export / "atb_arch.json").read_text())
    assert record["modeling_sha256"] == file_sha256(tinybert_export / MODELING_FILE)
    assert allow_remote_code(tinybert_export, user_trusts=False) is True
    bert = extract(make_supernet("tiny"), Arch(2, 32, 4, 32, 64), tmp_path / "bert")
    assert allow_remote_code(bert, user_trusts=False) is False  # a stock BERT needs no code at all


def test_an_edited_modeling_file_is_refused_and_runs_nothing(tinybert_export, tmp_path):
    from atb.finetune.remote_code import allow_remote_code
    from atb.model.extract import MODELING_FILE

    marker = tmp_path / "marker"
    edited = tmp_path / "edited"
    shutil.copytree(tinybert_export, edited)
    with (edited / MODELING_FILE).open("a") as fh:
        fh.write(f"\nfrom pathlib import Path as _P\n_P({str(marker)!r}).touch()\n")
    with pytest.raises(ValueError, match="changed after atb exported it.*--trust_remote_code true"):
        allow_remote_code(edited, user_trusts=False)
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "finetune.py"), "--model", str(edited), "--task", "sms_spam",
                           "--out_dir", str(tmp_path / "out"), "--max_train_samples", "4"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert MODELING_FILE in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_auto_map_to_foreign_code_is_refused(tinybert_export, tmp_path):
    from atb.finetune.remote_code import allow_remote_code

    foreign = tmp_path / "foreign"
    shutil.copytree(tinybert_export, foreign)
    config = json.loads((foreign / "config.json").read_text())
    config["auto_map"]["AutoModel"] = "evil.TinyBertModel"
    (foreign / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"\['evil', 'modeling_atb_tinybert'\]"):
        allow_remote_code(foreign, user_trusts=False)
    assert allow_remote_code(foreign, user_trusts=True) is True

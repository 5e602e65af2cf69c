"""Every bad input a new user tried gets one line naming the file, the problem and the fix, exit status 2,
and leaves the folder it ran in byte-identical (nothing written, nothing deleted)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
from conftest import make_supernet

from launching import run_tool


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fails_cleanly(tool: str, args: list, root: Path, names: str, nproc: int = 1,
                  launcher: list[str] | None = None) -> str:
    """Run `tool`; assert exit 2, one error line naming `names`, no traceback and `root` untouched."""
    before = tree(root)
    proc = run_tool(tool, args, nproc=nproc, check=False, timeout=300, launcher=launcher)
    errors = [line for line in proc.stderr.splitlines() if line.startswith(tool) and ": error: " in line]
    # torchrun itself exits 1 and prints its own report when a rank fails; the ranks add nothing to it
    under_torchrun = nproc > 1 and launcher is None
    assert proc.returncode == (1 if under_torchrun else 2), proc.stderr[-3000:]
    assert len(errors) == 1 and names in errors[0], proc.stderr[-3000:]
    assert proc.stderr.count("Traceback") == (1 if under_torchrun else 0), proc.stderr[-3000:]
    assert nproc == 1 or "exitcode  : -15" not in proc.stderr  # the other rank ended with the same code
    assert tree(root) == before
    return errors[0]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from atb.data import load_corpus, train_wordpiece

    root = tmp_path_factory.mktemp("tok")
    (root / "c.txt").write_text("\n".join(f"the quick brown fox jumps over the lazy dog {i}" for i in range(50)))
    train_wordpiece(load_corpus(str(root / "c.txt")), 60, root / "tokenizer")
    return root / "tokenizer"


def pretrain_args(corpus, tokenizer, out) -> list:
    return ["--out_dir", out, "--corpus", corpus, "--tokenizer", tokenizer, "--space", "tiny", "--seq_len", 16,
            "--steps", 2, "--ds_config", "zero2_fp32", "--report_to", "none"]


def test_an_empty_corpus(tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    line = fails_cleanly("pretrain", pretrain_args(tmp_path / "empty.txt", tokenizer, tmp_path / "out"), tmp_path,
                         "empty.txt")
    assert "empty (0 bytes)" in line


def test_a_binary_corpus(tokenizer, tmp_path):
    (tmp_path / "blob.txt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(4096)))
    line = fails_cleanly("pretrain", pretrain_args(tmp_path / "blob.txt", tokenizer, tmp_path / "out"), tmp_path,
                         "blob.txt")
    assert "not UTF-8 text" in line


def test_a_tokenizer_folder_without_a_vocabulary(tmp_path):
    (tmp_path / "c.txt").write_text("some text here\n" * 20)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizerFast"}))
    line = fails_cleanly("pretrain", pretrain_args(tmp_path / "c.txt", tmp_path / "tok", tmp_path / "out"),
                         tmp_path, str(tmp_path / "tok"))
    assert "has no tokenizer.json or vocab.txt" in line


def fake_checkpoint(root: Path) -> Path:
    """An atb DeepSpeed checkpoint folder, complete by its record (what extract/search/develop read)."""
    folder = root / "checkpoints" / "step00000004"
    folder.mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(64)}}, folder / "mp_rank_00_model_states.pt")
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    record = {"supernet_config": make_supernet().config.to_dict(), "step": 4, "world_size": 1, "files": files}
    (folder / "atb_complete.json").write_text(json.dumps(record))
    (root / "checkpoints" / "latest").write_text("step00000004")
    return root / "checkpoints"


def extract_args(ckpt: Path, out: Path) -> list:
    return ["--checkpoint", ckpt, "--arch", "L1_H32_A2_Q16_F48", "--out", out]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage\x9c", b"../../other_run/checkpoints/step00000004",
                                     b"/etc/step00000004"])
def test_latest_that_is_garbage_or_a_path(tmp_path, content):
    ckpt = fake_checkpoint(tmp_path)
    (ckpt / "latest").write_bytes(content)
    line = fails_cleanly("extract", extract_args(ckpt, tmp_path / "out"), tmp_path, str(ckpt / "latest"))
    assert "is corrupt" in line and "step<N>" in line


def test_a_same_size_bit_flipped_checkpoint_file(tmp_path):
    ckpt = fake_checkpoint(tmp_path)
    states = ckpt / "step00000004" / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    for i in range(0, 48):  # the zip's first local header: the archive cannot be opened
        data[i] ^= 0xFF
    states.write_bytes(bytes(data))
    line = fails_cleanly("extract", extract_args(ckpt, tmp_path / "out"), tmp_path, "mp_rank_00_model_states.pt")
    assert "is corrupt" in line


def test_a_non_utf8_finetuning_file_names_its_line(tmp_path):
    from atb.model.extract import extract
    from atb.space import Arch

    extract(make_supernet(), Arch(2, 32, 4, 32, 64), tmp_path / "model")
    (tmp_path / "task").mkdir()
    rows = ["sentence\tlabel", "a fine film\t1", "a dull film\t0", "caf\xe9 cr\xe8me\t1"]
    (tmp_path / "task" / "train.tsv").write_bytes("\n".join(rows).encode("latin-1") + b"\n")
    (tmp_path / "task" / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
    line = fails_cleanly("finetune", ["--model", tmp_path / "model", "--task", tmp_path / "task", "--out_dir",
                                      tmp_path / "out"], tmp_path, "train.tsv line 4")
    assert "not UTF-8" in line


def test_a_corrupt_latency_predictor(tmp_path):
    from atb.latency.predictor import FitOptions, LatencyPredictor
    from atb.search.targets import FlopsProxy
    from atb.space import SearchSpace

    space = SearchSpace.load("tiny")
    rng = random.Random(0)
    archs = list({space.sample(rng) for _ in range(30)})
    # a fixed ridge: the predictor only has to exist, so no cross-validation
    predictor = LatencyPredictor.fit(archs, FlopsProxy(16).predict(archs) * 1e4 + 0.2, space.to_spec(),
                                     {"device": "cpu", "batch": 1, "seq": 16},
                                     options=FitOptions(ensemble=1, ridge=1e-3))
    predictor.save(tmp_path / "predictor")
    weights = next((tmp_path / "predictor").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[:8] = b"\xff" * 8  # the header length: same size, unreadable
    weights.write_bytes(bytes(data))
    line = fails_cleanly("latency", ["predict", "--predictor", tmp_path / "predictor", "--archs", archs[0].name],
                         tmp_path, weights.name)
    assert "corrupt" in line and "fit" in line


def test_a_torn_last_metrics_line_is_dropped_and_a_corrupt_one_named(tmp_path):
    from atb.train.loop import truncate_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    truncate_metrics(metrics, 2)
    assert metrics.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    metrics.write_text('{"step": 1, "loss": 2.0}\nxx\n{"step": 2, "loss": 1.5}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2 is corrupt"):
        truncate_metrics(metrics, 2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_output_folder(tmp_path):
    from atb.model.supernet_io import save_supernet

    save_supernet(make_supernet(), tmp_path / "plm")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o555)
    try:
        line = fails_cleanly("extract", ["--checkpoint", tmp_path / "plm", "--arch", "L1_H32_A2_Q16_F48", "--out",
                                         tmp_path / "locked" / "out"], tmp_path, "locked")
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert "permission denied" in line


def test_a_permission_error_is_one_line_naming_the_file(tmp_path):
    """The CLI's handling of PermissionError, whoever runs the suite (root ignores file modes)."""
    import subprocess

    from conftest import PYTHON, REPO

    script = ("import dataclasses\nfrom atb.cli import run_cli\n@dataclasses.dataclass\nclass C:\n    out: str = ''\n"
              "def run(cfg):\n    raise PermissionError(13, 'Permission denied', cfg.out)\nrun_cli(C, run, prog='tool')\n")
    proc = subprocess.run([PYTHON, "-c", script, "--out", str(tmp_path / "x")], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (f"tool: error: cannot write {tmp_path / 'x'}: permission denied; choose a "
                                   "writable --out_dir or fix its permissions")


def test_two_ranks_report_a_bad_corpus_once(tokenizer, tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    fails_cleanly("pretrain", pretrain_args(tmp_path / "empty.txt", tokenizer, tmp_path / "out"), tmp_path,
                  "empty.txt", nproc=2)


def test_two_ranks_under_the_deepspeed_launcher_exit_2_without_a_traceback(tokenizer, tmp_path):
    from conftest import PYTHON, REPO
    from launching import free_port

    (tmp_path / "empty.txt").write_bytes(b"")
    launcher = ["env", f"PYTHON={PYTHON}", f"MASTER_PORT={free_port()}", "bash", str(REPO / "launch" / "local.sh"), "2"]
    fails_cleanly("pretrain", pretrain_args(tmp_path / "empty.txt", tokenizer, tmp_path / "out"), tmp_path,
                  "empty.txt", launcher=launcher)

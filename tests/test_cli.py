"""Typed configs from the command line: wrong flags and values fail before the job starts."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import pytest

from atb.cli import build_config, git_hash
from conftest import PYTHON, REPO


@dataclass
class Example:
    steps: int = 1
    lr: float = 0.1
    name: str = "x"
    flag: bool = False
    tags: list[str] | None = None


def test_values_are_coerced_to_the_annotated_types():
    cfg = build_config(Example, {"steps": "3", "lr": 1, "flag": "true", "tags": "a,b"})
    assert cfg == Example(steps=3, lr=1.0, flag=True, tags=["a", "b"])
    with pytest.raises(ValueError, match="--steps expects int"):
        build_config(Example, {"steps": "many"})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['--stpes'\]; valid options: --steps"):
        build_config(Example, {"stpes": 3})


def test_a_mistyped_flag_stops_the_tool_before_it_runs(tmp_path):
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "extract.py"), "--checkpoint", tmp_path, "--arch",
                           "L1_H16_A1_Q8_F16", "--out", tmp_path / "o", "--overwrit", "true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--overwrit" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()
    help_text = subprocess.run([PYTHON, str(REPO / "tools" / "extract.py"), "--help"], capture_output=True,
                               text=True, timeout=120, env={"PAGER": "cat", "PATH": "/usr/bin:/bin"})
    assert "--checkpoint" in help_text.stdout + help_text.stderr


def test_git_hash_names_the_code_version():
    assert git_hash(REPO) != "unknown"

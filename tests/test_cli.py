"""Typed configs from the command line: wrong flags and values fail before the job starts."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from atb.cli import build_config, field_help, git_hash
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


def test_fire_shapes_become_the_annotated_types():
    """fire reads `a,b` as a tuple, `12,20` as a tuple of ints and JSON as dicts and lists."""
    cfg = build_config(Example, {"tags": ("tensorboard", "wandb")})
    assert cfg.tags == ["tensorboard", "wandb"]
    assert build_config(Example, {"tags": (12, 20)}).tags == ["12", "20"]
    assert build_config(Example, {"tags": "12ms, 20ms"}).tags == ["12ms", "20ms"]
    assert build_config(Example, {"tags": 12}).tags == ["12"]
    arch = {"layers": 1, "hidden": 32}
    assert build_config(Example, {"tags": [arch, arch]}).tags == ['{"layers": 1, "hidden": 32}'] * 2
    assert build_config(Example, {"name": arch}).name == '{"layers": 1, "hidden": 32}'
    assert build_config(Example, {"name": ("a", "b")}).name == "a,b"


def tool_configs():
    from atb.latency.jobs import FitConfig, MeasureConfig, PredictConfig
    from atb.finetune import FinetuneConfig
    from atb.search.config import SearchConfig
    from atb.train.config import PretrainConfig
    from atb.train.config import DevelopConfig

    return [PretrainConfig, DevelopConfig, SearchConfig, FinetuneConfig, MeasureConfig, FitConfig, PredictConfig,
            tool_module("extract").ExtractConfig, tool_module("demo").DemoConfig]


def tool_module(name: str):
    """tools/<name>.py imported as a module (its source, which the help is read from, stays findable)."""
    spec = importlib.util.spec_from_file_location(f"atb_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", tool_configs(), ids=lambda c: c.__name__)
def test_every_flag_has_a_one_line_help(config):
    helps = field_help(config)
    assert list(helps) == [f.name for f in dataclasses.fields(config)]
    assert [name for name, text in helps.items() if len(text) < 8] == []


def test_help_lists_each_flag_with_its_comment():
    proc = subprocess.run([PYTHON, str(REPO / "tools" / "search.py"), "--help"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PAGER": "cat"})
    text = proc.stdout + proc.stderr
    assert "--targets" in text and field_help(tool_configs()[2])["targets"] in text
    assert "a candidate for target T predicts at least band_low * T" in text


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

"""A diverging run never saves the step whose update blew the weights up, names its last good checkpoint,
and a re-run with a sane lr resumes from it and trains past the old failure step."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from launching import read_losses, run_tool, tiny_pretrain_args


def fake_engine(*tensors: torch.Tensor):
    return SimpleNamespace(module=torch.nn.ParameterList([torch.nn.Parameter(t) for t in tensors]))


def test_weight_guard_catches_non_finite_and_huge_weights_and_passes_sane_ones():
    from atb.train.divergence import Diverged, check_weights, largest_weight

    assert largest_weight(fake_engine(torch.tensor([0.5, -3.0]), torch.tensor([2.0]))) == 3.0
    check_weights(fake_engine(torch.tensor([0.5, -3.0])), step=7, bound=10.0)
    with pytest.raises(Diverged, match="after step 7 are not finite"):
        check_weights(fake_engine(torch.tensor([0.5]), torch.tensor([math.nan])), step=7, bound=10.0)
    with pytest.raises(Diverged, match=r"after step 7 are huge \(max \|w\| = 20"):
        check_weights(fake_engine(torch.tensor([-20.0])), step=7, bound=10.0)
    check_weights(fake_engine(torch.tensor([-20.0])), step=7, bound=0.0)  # 0: no bound, finiteness only


def test_a_divergence_error_names_the_last_good_checkpoint(tmp_path):
    from atb.train.checkpointing import COMPLETE, LATEST
    from atb.train.divergence import Diverged, naming_last_good

    with pytest.raises(Diverged, match="no checkpoint was saved"), naming_last_good(tmp_path):
        raise Diverged("boom")
    (tmp_path / "step00000002").mkdir()
    (tmp_path / "step00000002" / COMPLETE).write_text(json.dumps({"files": {}}))
    (tmp_path / LATEST).write_text("step00000002")
    with pytest.raises(Diverged, match="boom; the last good checkpoint is .*step00000002"), naming_last_good(tmp_path):
        raise Diverged("boom")


@pytest.mark.slow  # two tiny pre-training runs: ~1-2 min on 2 busy cores
def test_lr_1e9_stops_before_saving_poison_and_a_sane_rerun_trains_past_it(tmp_path):
    from atb.train.consolidate import load_supernet_or_checkpoint

    out = tmp_path / "run"
    schedule = {"steps": 6, "save_every": 1, "warmup_steps": 4}
    failed = run_tool("pretrain", tiny_pretrain_args(tmp_path, out, lr=1e9, **schedule), check=False)
    assert failed.returncode == 2 and "the run diverged" in failed.stderr, failed.stderr[-2000:]
    failure_step = max(read_losses(out))
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert tag == f"step{failure_step - 1:08d}" and "last good checkpoint is" in failed.stderr
    assert str(out / "checkpoints" / tag) in failed.stderr
    saved, _ = load_supernet_or_checkpoint(out / "checkpoints")
    peak = max(float(p.detach().abs().max()) for p in saved.parameters())
    assert math.isfinite(peak) and peak < 1e4
    run_tool("pretrain", tiny_pretrain_args(tmp_path, out, lr=2e-3, **schedule))
    losses = read_losses(out)
    assert max(losses) == 6 and all(math.isfinite(v) for v in losses.values())
    assert (out / "checkpoints" / "latest").read_text().strip() == "step00000006"

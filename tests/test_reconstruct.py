"""Least-squares reconstruction of a sliced sub-network against its source: it recovers projections that
were broken on purpose, brings a sliced sub-network closer to the source on unseen blocks, and refuses
calibration it cannot use."""

from __future__ import annotations

import copy

import pytest
import torch

from atb.model.bert_source import build_model, read_config, source_dims
from atb.model.elastic import SuperBert, SuperBertConfig
from atb.model.extract import build_masked_lm
from atb.model.pretrained_init import init_from_pretrained
from atb.model.reconstruct import BLOCKS, Calibration, _AffineNormal, _refit_norm, reconstruct
from atb.source_space import space_from_source
from atb.space import Arch, SearchSpace
from bert_sources import VOCAB, padded_batch, save_random_bert


def blocks(count: int, seed: int, batch: int = 4, seq: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(5, VOCAB, (batch, seq), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)})
    return out


def calibration(source, count: int = 12, seed: int = 0) -> Calibration:
    batches = blocks(count, seed)
    return Calibration.from_source(source, batches, [i % 4 == 3 for i in range(count)])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = save_random_bert(tmp_path_factory.mktemp("src") / "bert", layers=3)
    return folder, build_model(folder, read_config(folder)).eval()


def last_hidden(model, batch, width: int | None = None) -> torch.Tensor:
    base = getattr(model, "bert", model)
    with torch.no_grad():
        out = base(**batch).last_hidden_state
    return out[..., :width] if width else out


def test_recovers_projections_and_layer_norms_broken_on_purpose(source):
    _, model = source
    student = copy.deepcopy(model)
    with torch.no_grad():
        for layer in student.encoder.layer:
            for dense in (layer.attention.output.dense, layer.output.dense):
                dense.weight.add_(torch.randn_like(dense.weight) * 0.2)
                dense.bias.add_(0.1)
            layer.output.LayerNorm.weight.mul_(1.5)
        student.embeddings.LayerNorm.bias.add_(0.3)
    batch = padded_batch(seed=7)
    real = batch["attention_mask"].bool()
    assert (last_hidden(student, batch) - last_hidden(model, batch))[real].abs().max() > 0.05
    fits = reconstruct(student, calibration(model), ridge=1e-9)
    assert all(f.replaced for f in fits if f.block in BLOCKS) and len(fits) == 1 + 4 * 3
    assert all(f.replaced for f in fits if f.block in ("embeddings_norm", "ffn_norm"))
    # exact targets exist (the source's own weights), so the solve finds them; padding is not an issue later
    torch.testing.assert_close(last_hidden(student, batch)[real], last_hidden(model, batch)[real],
                               atol=1e-4, rtol=1e-4)


def test_a_layer_norm_fit_is_each_channels_least_squares_line():
    g = torch.Generator().manual_seed(0)
    n = torch.randn(500, 6, generator=g)
    noise = 0.3 * torch.randn(500, 6, generator=g)
    y = n * torch.tensor([0.5, 2.0, -1.0, 0.0, 1.0, 3.0]) + torch.linspace(-1, 1, 6) + noise
    fit, held = _AffineNormal(6, torch.device("cpu")), _AffineNormal(6, torch.device("cpu"))
    fit.add(n[:400], y[:400]), held.add(n[400:], y[400:])
    norm = torch.nn.LayerNorm(6)
    assert _refit_norm(norm, fit, held, ridge=1e-9, layer=0, block="ffn_norm", source_layer=0).replaced
    for c in range(6):  # the reference: an independent least-squares solve of [n, 1] -> y per channel
        design = torch.stack([n[:400, c], torch.ones(400)], 1).double()
        line = torch.linalg.lstsq(design, y[:400, c:c + 1].double()).solution.flatten()
        torch.testing.assert_close(torch.stack([norm.weight[c], norm.bias[c]]).double(), line, atol=1e-5, rtol=1e-5)
    # the held-out error is the mean squared residual as a share of y's variance there
    residual = y[400:] - (n[400:] * norm.weight.detach() + norm.bias.detach())
    expected = residual.double().square().sum() / (y[400:].double() - y[400:].double().mean(0)).square().sum()
    weight, bias = norm.weight.detach().double(), norm.bias.detach().double()
    assert held.error(weight, bias) == pytest.approx(float(expected), rel=1e-6)


def sliced(folder, arch: Arch):
    config = read_config(folder)
    dims = source_dims(config)
    space = SearchSpace.from_spec(space_from_source(dims.layers, dims.hidden, dims.heads, dims.qkv, dims.ffn))
    supernet = SuperBert(SuperBertConfig(space=space.to_spec(), vocab_size=dims.vocab_size,
                                         max_position_embeddings=dims.max_positions)).eval()
    init_from_pretrained(supernet, folder)
    return build_masked_lm(supernet, arch)


@pytest.mark.parametrize("arch", ["L3_H32_A4_Q16_F16", "L3_H24_A4_Q32_F32"])
def test_a_sliced_sub_network_moves_towards_the_source_on_unseen_blocks(source, arch):
    folder, model = source
    student = sliced(folder, Arch.parse(arch))
    width = student.config.hidden_size
    unseen = blocks(4, seed=99)

    def error() -> float:
        return sum(float((last_hidden(student, b) - last_hidden(model, b, width)).square().mean()) for b in unseen)

    before = error()
    fits = reconstruct(student, calibration(model, count=16))
    assert any(f.replaced for f in fits)
    assert all(f.error_after <= f.error_before for f in fits)
    assert error() < 0.8 * before


def test_a_student_that_is_the_source_keeps_every_weight(source):
    """The largest sub-network rebuilds its source exactly, so its fits can only gain rounding, and rounding
    must never replace a weight: ranks that sum their equations in another order would keep different ones."""
    folder, model = source
    student = sliced(folder, Arch.parse("L3_H32_A4_Q32_F64"))
    before = copy.deepcopy(student.state_dict())
    fits = reconstruct(student, calibration(model))
    assert all(f.error_before < 1e-6 for f in fits) and not any(f.replaced for f in fits)
    assert all(torch.equal(before[name], weight) for name, weight in student.state_dict().items())


def test_last_to_last_matches_the_sources_last_layer(source):
    folder, model = source
    student = sliced(folder, Arch.parse("L2_H32_A4_Q32_F32"))
    fits = reconstruct(student, calibration(model), last_to_last=True)
    assert [(f.block, f.source_layer) for f in fits] == [
        ("embeddings_norm", -1), ("attention", 0), ("attention_norm", 0), ("ffn", 0), ("ffn_norm", 0),
        ("attention", 2), ("attention_norm", 2), ("ffn", 2), ("ffn_norm", 2)]


def test_unusable_calibration_is_refused(source):
    _, model = source
    padded = [padded_batch(seed=s) for s in range(4)]
    with pytest.raises(ValueError, match="no padding"):
        Calibration.from_source(model, padded, [False, False, False, True])
    with pytest.raises(ValueError, match="held-out flags"):
        Calibration.from_source(model, blocks(4, 0), [False])
    no_judge = Calibration.from_source(model, blocks(4, 0), [False] * 4)
    with pytest.raises(ValueError, match="judge the fit"):
        reconstruct(copy.deepcopy(model), no_judge)

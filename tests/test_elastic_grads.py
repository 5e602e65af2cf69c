"""Gradients of SuperBert(arch) are exactly those of the extracted dense model, placed in the leading
sub-blocks (per head in the KD space) and zero everywhere else; and they reach every parameter through
ordinary autograd, one AccumulateGrad call per parameter and backward, which is what DeepSpeed ZeRO hooks.

The reference side never uses SuperBert's slicing code for gradients: it is a transformers model built
from the extracted weights, and where its gradients belong in the supernet is found by extracting a
supernet whose weights are their own flat indices.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from atb.model.elastic import SuperBert
from atb.model.extract import build_masked_lm
from atb.space import Arch
from conftest import make_supernet, padded_batch


def labels_for(ids: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.4, ids, torch.full_like(ids, -100))
    labels[0, 0] = ids[0, 0]  # at least one labelled position
    return labels.masked_fill(mask == 0, -100)


def index_maps(model, arch: Arch) -> dict[str, torch.Tensor]:
    """For each dense parameter name, the flat indices of the supernet parameter it was extracted from."""
    indexed = SuperBert(model.config)
    with torch.no_grad():
        for p in indexed.parameters():
            assert p.numel() < 2**24  # indices stay exact in fp32
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).view_as(p))
    return {name: t.long() for name, t in indexed.sub_state_dict(arch).items()}


def expected_grads(model, arch: Arch, dense_grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for name, where in index_maps(model, arch).items():
        expected[name].view(-1)[where.flatten()] = dense_grads[name].flatten()
    return expected


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def supernet_grads(model, archs: list[Arch], batch, all_logits: bool, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Gradients of SuperBert on `device` (a copy of `model` there), returned on the CPU."""
    model = model if device == "cpu" else copy.deepcopy(model).to(device)
    ids, mask, types, labels = (t.to(device) for t in batch)
    model.zero_grad(set_to_none=True)
    loss = sum(model(ids, mask, types, arch=a, labels=labels, logits_for_all=all_logits).loss for a in archs)
    loss.backward()
    return {name: (p.grad if p.grad is not None else torch.zeros_like(p)).cpu() for name, p in model.named_parameters()}


def dense_grads(model, arch: Arch, batch) -> dict[str, torch.Tensor]:
    ids, mask, types, labels = batch
    dense = build_masked_lm(model, arch)  # eval mode: no dropout, as the supernet fixture
    dense(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels).loss.backward()
    return {name: p.grad for name, p in dense.named_parameters()}


def assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{what} {name}: {m}")


def archs_of(model, n: int, seed: int) -> list[Arch]:
    rng = random.Random(seed)
    archs = {model.space.smallest(), model.space.largest()} | {model.space.sample(rng) for _ in range(n)}
    return sorted(archs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("space", ["tiny", "tiny_kd"])
@pytest.mark.parametrize("all_logits", [True, False])
def test_supernet_gradients_are_the_dense_gradients_in_place(space, all_logits, device):
    model = make_supernet(space)
    ids, mask, types = padded_batch()
    batch = (ids, mask, types, labels_for(ids, mask))
    archs = archs_of(model, 5, seed=2)
    assert any(a.hidden < model.largest.hidden for a in archs) and any(a.layers < model.largest.layers for a in archs)
    for arch in archs:
        want = expected_grads(model, arch, dense_grads(model, arch, batch))
        assert_grads_close(supernet_grads(model, [arch], batch, all_logits, device), want, arch.name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("space", ["tiny", "tiny_kd"])
def test_several_archs_in_one_graph_add_their_gradients(space, device):
    """The sandwich rule runs several archs in one forward and one backward."""
    model = make_supernet(space)
    ids, mask, types = padded_batch(seed=1)
    batch = (ids, mask, types, labels_for(ids, mask, seed=1))
    archs = [model.space.largest(), model.space.smallest(), model.space.sample(random.Random(5))]
    want = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for arch in archs:
        for name, g in expected_grads(model, arch, dense_grads(model, arch, batch)).items():
            want[name] += g
    assert_grads_close(supernet_grads(model, archs, batch, False, device), want, "sandwich")


def test_encoder_only_loss_still_trains_the_word_embeddings():
    """KD losses use hidden states only: the decoder's share of the tied weight is then absent, not zero-filled."""
    model = make_supernet("tiny_kd")
    ids, mask, types = padded_batch()
    arch = model.space.sample(random.Random(7))
    hidden, _ = model.encode(ids, mask, types, arch)
    hidden.pow(2).sum().backward()
    grad = model.bert.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad[:, : arch.hidden].abs().sum() > 0
    assert torch.count_nonzero(grad[:, arch.hidden:]) == 0


@pytest.mark.parametrize("space", ["tiny", "tiny_kd"])
def test_each_parameter_gets_one_accumulate_grad_call_per_backward(space):
    """DeepSpeed ZeRO reduces a gradient from the hook on its parameter's AccumulateGrad node: it must fire
    exactly once per backward for every parameter the arch uses (tied word embeddings included), never
    for layers past the arch's depth, and the gradient must land in `.grad` through it."""
    model = make_supernet(space).train()
    ids, mask, types = padded_batch()
    labels = labels_for(ids, mask)
    arch = Arch(layers=1, hidden=model.largest.hidden - 8, heads=model.largest.heads,
                qkv=model.largest.qkv - (4 if space == "tiny_kd" else 0), ffn=model.largest.ffn - 16)
    model.space.validate(arch)
    calls: dict[str, int] = {}
    keep = []
    for name, p in model.named_parameters():
        node = p.expand_as(p).grad_fn.next_functions[0][0]  # what DeepSpeed hooks
        keep.append(node)
        node.register_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    model(ids, mask, types, arch=arch, labels=labels).loss.backward()
    used = {n for n, _ in model.named_parameters() if not n.startswith(("bert.encoder.layer.1.", "bert.encoder.layer.2."))}
    assert calls == {name: 1 for name in used}
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in used), name


def test_gradients_of_successive_steps_and_accumulated_backwards():
    """A smaller arch's step after a larger one's gets exactly its own gradients (nothing of the larger
    slice left behind), and two backwards without zero_grad in between add up."""
    model = make_supernet("tiny")
    ids, mask, types = padded_batch(seed=3)
    batch = (ids, mask, types, labels_for(ids, mask, seed=3))
    big, small = model.space.largest(), model.space.smallest()
    big = Arch(big.layers, big.hidden - 8, big.heads, big.qkv, big.ffn)
    model.space.validate(big)
    supernet_grads(model, [big], batch, all_logits=True)
    got = supernet_grads(model, [small], batch, all_logits=True)
    assert_grads_close(got, expected_grads(model, small, dense_grads(model, small, batch)), "second step")

    model.zero_grad(set_to_none=True)
    ids, mask, types, labels = batch
    for arch in (small, big):  # no zero_grad in between: the second adds into the first's .grad
        model(ids, mask, types, arch=arch, labels=labels, logits_for_all=True).loss.backward()
    want = expected_grads(model, small, dense_grads(model, small, batch))
    for name, g in expected_grads(model, big, dense_grads(model, big, batch)).items():
        want[name] += g
    got = {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in model.named_parameters()}
    assert_grads_close(got, want, "accumulated")

"""The greedy FFN order: each next neuron is the one whose least-squares refit of the FFN's output, with the
neurons before it, reconstructs that output best (checked against solving every candidate's refit)."""

from __future__ import annotations

import torch

from atb.model.bert_source import build_model, encoder_model, read_config, source_dims
from atb.model.ffn_order import compute_ffn_orders, greedy_order
from bert_sources import padded_batch, save_random_bert


def refit_error(activations: torch.Tensor, target: torch.Tensor, kept: list[int]) -> float:
    """Squared error of the best reconstruction of `target` from the `kept` activations and a bias."""
    x = torch.cat([activations[:, kept], torch.ones(len(activations), 1, dtype=activations.dtype)], 1)
    solution = torch.linalg.lstsq(x, target).solution
    return float((x @ solution - target).square().sum())


def reference_order(activations: torch.Tensor, weight: torch.Tensor, steps: int) -> list[int]:
    target = activations @ weight.T
    chosen: list[int] = []
    for _ in range(steps):
        rest = [j for j in range(activations.shape[1]) if j not in chosen]
        chosen.append(min(rest, key=lambda j: refit_error(activations, target, chosen + [j])))
    return chosen


def centred_gram(activations: torch.Tensor) -> torch.Tensor:
    centred = activations - activations.mean(0)
    return centred.T @ centred / len(activations)


def test_each_next_neuron_is_the_one_whose_refit_reconstructs_the_output_best():
    g = torch.Generator().manual_seed(0)
    tokens, ffn, hidden = 400, 9, 5
    activations = torch.randn(tokens, ffn, generator=g, dtype=torch.float64) @ torch.randn(
        ffn, ffn, generator=g, dtype=torch.float64) + torch.randn(ffn, generator=g, dtype=torch.float64)
    activations[:, 4] = 2 * activations[:, 1] + 0.5  # a neuron that carries nothing the other one does not
    weight = torch.randn(hidden, ffn, generator=g, dtype=torch.float64)
    order = greedy_order(centred_gram(activations), weight).tolist()
    assert sorted(order) == list(range(ffn))
    independent = ffn - 1  # past them, every refit is exact and the candidates tie
    assert order[:independent] == reference_order(activations, weight, independent)
    assert order[-1] in (1, 4)


def test_the_orders_of_a_bert_are_those_of_its_ffn_activations_on_real_tokens(tmp_path):
    folder = save_random_bert(tmp_path / "bert", layers=2, hidden=16, heads=2, ffn=12)
    config = read_config(folder)
    model = build_model(folder, config).eval()
    batches = [padded_batch(seed=s, batch=4, seq=10) for s in range(3)]
    seen: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    hooks = [layer.intermediate.register_forward_hook(lambda m, a, out, i=i: seen[i].append(out))
             for i, layer in enumerate(encoder_model(model).encoder.layer)]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for h in hooks:
        h.remove()
    real = [b["attention_mask"].bool() for b in batches]
    orders = compute_ffn_orders(model, batches, source_dims(config))
    assert orders.shape == (2, 12)
    for i, layer in enumerate(encoder_model(model).encoder.layer):
        activations = torch.cat([out[mask] for out, mask in zip(seen[i], real)]).double()
        weight = layer.output.dense.weight.detach().double()
        assert orders[i, :4].tolist() == reference_order(activations, weight, 4)
        assert sorted(orders[i].tolist()) == list(range(12))

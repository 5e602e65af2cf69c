"""An order of each layer's FFN neurons in which every leading block reconstructs the whole FFN best.

A sub-network keeps an FFN's first f neurons, and develop refits the FFN's output projection from them by
least squares. Ranking neurons one by one by their magnitude ignores that two neurons can carry the same
signal. Here they are chosen greedily instead: the next neuron is the one whose activation, beyond what the
neurons already chosen explain, reconstructs the most of the FFN's output. The order is nested by
construction, so it serves every f at once. It needs only the activations' first and second moments on
calibration tokens and the output weights, so ranks add up their moments and all compute the same order.
"""

from __future__ import annotations

import torch
from torch import nn

from atb.model.bert_source import Reduce, SourceDims, encoder_model, run_calibration

DEAD_SHARE = 1e-10  # a neuron whose unexplained variance is below this share of the largest adds nothing


def greedy_order(gram: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The neurons in the order of greedy forward selection for reconstructing `activations @ weight.T`.

    `gram` is the activations' centred second-moment matrix [ffn, ffn] (centred: the refit has a bias),
    `weight` the output projection [hidden, ffn]. Step k picks the neuron j maximising
    |residual_j^T Y|^2 / |residual_j|^2, where residual_j is j's activation minus its projection on the
    neurons already picked: the drop in squared reconstruction error that adding j to them gives.
    """
    gram = gram.double()
    cross = gram @ weight.double().T  # [ffn, hidden]: activations^T Y, less what the picked neurons explain
    unexplained = gram.diagonal().clone()  # each activation's variance left once the picked are explained
    floor = DEAD_SHARE * unexplained.max().clamp_min(1e-300)
    factor = torch.zeros_like(gram)  # column k: the k-th picked neuron's part of every activation (pivoted Cholesky)
    free = torch.ones(len(gram), dtype=torch.bool, device=gram.device)
    order = []
    for k in range(len(gram)):
        gain = torch.where(unexplained > floor, cross.square().sum(1) / unexplained.clamp_min(floor), 0.0)
        pick = int(gain.masked_fill(~free, -1.0).argmax())
        order.append(pick)
        free[pick] = False
        norm = unexplained[pick].clamp_min(floor).sqrt()
        column = (gram[:, pick] - factor[:, :k] @ factor[pick, :k]) / norm
        factor[:, k] = column
        unexplained -= column.square()
        cross.addr_(column, cross[pick] / norm, alpha=-1.0)
    return torch.tensor(order)


@torch.no_grad()
def compute_ffn_orders(model: nn.Module, batches: list[dict[str, torch.Tensor]], dims: SourceDims,
                       reduce: Reduce = lambda t: t) -> torch.Tensor:
    """[layers, ffn]: the greedy reconstruction order of every layer's FFN neurons of `model` (a transformers
    BERT-family model) over the real tokens of this rank's `batches`; `reduce` sums a tensor over ranks."""
    device = next(model.parameters()).device
    sums = torch.zeros(dims.layers, dims.ffn, dtype=torch.float64, device=device)
    products = torch.zeros(dims.layers, dims.ffn, dims.ffn, dtype=torch.float64, device=device)
    real: dict[str, torch.Tensor] = {}

    def add(i: int, activations: torch.Tensor) -> None:
        a = activations.detach().double()[real["mask"]]  # [tokens, ffn]
        sums[i] += a.sum(0)
        products[i] += a.T @ a

    layers = encoder_model(model).encoder.layer
    hooks = [layer.intermediate.register_forward_hook(lambda m, a, out, i=i: add(i, out))
             for i, layer in enumerate(layers)]
    tokens = run_calibration(model, batches, hooks, real)
    count = reduce(tokens).clamp_min(1)
    means, products = reduce(sums) / count, reduce(products) / count
    return torch.stack([greedy_order(products[i] - torch.outer(means[i], means[i]), layer.output.dense.weight.detach())
                        for i, layer in enumerate(layers)])

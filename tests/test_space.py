import json
import random

import pytest

from atb.space import Arch, SearchSpace, SpaceError, presets


def test_presets_match_the_paper():
    mlm = SearchSpace.load("mlm")
    assert mlm.largest() == Arch(8, 768, 12, 768, 3072)
    assert mlm.qkv_choices(3) == [192]  # head dim fixed at 64
    kd = SearchSpace.load("kd")
    assert kd.largest() == Arch(8, 768, 12, 768, 3072)
    assert kd.qkv_choices(12)[0] == 180 and kd.qkv_choices(12)[-1] == 768
    assert all(q % 12 == 0 for q in kd.qkv_choices(12))
    assert {"mlm", "kd", "demo", "tiny", "tiny_kd"} <= set(presets())


@pytest.mark.parametrize("name", ["mlm", "kd", "tiny", "tiny_kd", "demo"])
def test_sampling_mutation_crossover_stay_in_space(name):
    space = SearchSpace.load(name)
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(200)]
    for a, b in zip(archs, archs[1:]):
        space.validate(a)
        space.validate(space.mutate(a, rng, 0.5))
        space.validate(space.crossover(a, b, rng))
    assert len(set(archs)) > 150  # sampling actually explores
    space.validate(space.smallest())


def test_arch_round_trips_through_json_and_name():
    a = Arch(3, 256, 4, 128, 512)
    assert Arch.parse(a.name) == a
    assert Arch.parse(json.dumps(a.to_dict())) == a
    space = SearchSpace.load("kd")
    assert SearchSpace.from_spec(json.loads(json.dumps(space.to_spec()))) == space


def test_out_of_space_arch_names_field_value_and_allowed_set():
    space = SearchSpace.load("mlm")
    with pytest.raises(SpaceError, match=r"hidden=130 .*allowed 128\.\.768 step 4"):
        space.validate(Arch(4, 130, 4, 256, 512))
    with pytest.raises(SpaceError, match=r"qkv=200"):
        space.validate(Arch(4, 128, 4, 200, 512))
    with pytest.raises(SpaceError, match="layers=9"):
        space.validate(Arch(9, 128, 4, 256, 512))
    with pytest.raises(SpaceError, match="cannot parse arch"):
        Arch.parse("L4-H128")


def test_bad_spec_files(tmp_path):
    with pytest.raises(SpaceError, match="unknown space 'nope'"):
        SearchSpace.load("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nlayers: {min: 1, max: 4}\nhidden: {min: 64, max: 100, step: 32}\n"
                   "heads: {min: 1, max: 2}\nhead_dim: 32\nffn: {min: 64, max: 128}\n")
    with pytest.raises(SpaceError, match="hidden.*max 100 is not reachable"):
        SearchSpace.load(bad)
    bad.write_text("name: x\nlayers: [1, 2]\n")
    with pytest.raises(SpaceError, match="'layers' must be a mapping"):
        SearchSpace.load(bad)
    with pytest.raises(SpaceError, match="does not exist"):
        SearchSpace.load(tmp_path / "missing.yaml")


def test_a_space_from_a_source_has_the_source_as_its_largest_arch():
    from atb.source_space import space_from_source

    space = SearchSpace.from_spec(space_from_source(6, 384, 12, 384, 1536))
    assert space.largest() == Arch(6, 384, 12, 384, 1536)
    assert space.heads.min == space.heads.max == 12 and space.qkv is not None  # per-head qkv, every head kept
    assert space.layers.min == 1 and len(space.hidden.values()) == 12 and len(space.ffn.values()) == 16
    odd = SearchSpace.from_spec(space_from_source(3, 100, 4, 100, 250, hidden_step=8, ffn_step=16, head_dim_step=5))
    assert odd.largest() == Arch(3, 100, 4, 100, 250) and odd.hidden.step == 8 and odd.hidden.min == 4


def test_a_space_larger_than_its_source_is_refused():
    from atb.source_space import check_within
    from atb.space import SpaceError

    with pytest.raises(SpaceError, match=r"larger than the source .*hidden 256 > 128"):
        check_within(SearchSpace.load("demo"), layers=4, hidden=128, heads=4, qkv=256, ffn=1024, source="src")
    check_within(SearchSpace.load("demo"), layers=4, hidden=256, heads=4, qkv=256, ffn=1024, source="src")


def test_a_compressed_superplm_is_searched_at_whole_width_and_at_least_a_quarter_of_each_width():
    from atb.search.runner import searched_space

    spec = {"name": "from_model", "layers": {"min": 1, "max": 6, "step": 1}, "hidden": {"min": 32, "max": 384, "step": 32},
            "heads": {"min": 12, "max": 12, "step": 1}, "qkv": {"min": 48, "max": 384, "step": 48},
            "ffn": {"min": 100, "max": 1000, "step": 300}}  # a quarter of 1000 lies between grid values
    whole = SearchSpace.from_spec(spec)
    searched = searched_space("", whole, {"source": "/models/minilm"})
    searched.check_within(whole)
    assert searched.largest() == whole.largest() and searched.layers == whole.layers
    assert (searched.hidden.values(), searched.ffn.values()) == ([384], [400, 700, 1000])
    assert searched.qkv.values() == [96, 144, 192, 240, 288, 336, 384]
    # from scratch, or asked for all of it: the whole space; an explicit part must lie inside it
    assert searched_space("", whole, {}) == whole == searched_space("all", whole, {"source": "/models/minilm"})
    with pytest.raises(SpaceError):
        searched_space("mlm", whole, {"source": "/models/minilm"})

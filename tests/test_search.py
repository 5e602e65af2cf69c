"""The search core on the tiny space with an analytic fitness (fast, in-process). The fitness functions on a
tiny supernet are in test_search_fitness.py; end-to-end runs through tools/search.py on 1 and 2 ranks live in
test_search_distributed.py."""

from __future__ import annotations

import json
import random

import pytest

from atb.search.evolution import Proposer
from atb.search.loop import EvaluationFailed, LoopSpec, run_search_loop
from atb.search.outputs import pareto_front
from atb.search.parallel import LocalComm, assign, evaluation_cost
from atb.search.sampling import BandUnreachable, is_fast_arch, sample_fast, step_mutate
from atb.search.settings import PRESETS, Band, EvolutionSettings, settings_from
from atb.search.state import read_journals
from atb.search.targets import FlopsProxy, LatencyOracle, resolve_targets
from atb.space import Arch, SearchSpace

TINY = SearchSpace.load("tiny")


def analytic_loss(arch: Arch) -> float:
    """Bigger is better, with a wrinkle so that the ranking is not just latency order."""
    return 5.0 / (arch.layers * arch.hidden * arch.ffn * arch.qkv) ** 0.25 + 0.01 * (arch.hidden % 24) / 24


class CountingFitness:
    higher_is_better = False
    name = "analytic"

    def __init__(self, fn=analytic_loss, fail_after: int | None = None):
        self.fn, self.fail_after, self.calls = fn, fail_after, []

    def __call__(self, arch: Arch) -> float:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated kill")
        self.calls.append(arch)
        return self.fn(arch)


def make_search(method="evolution", settings: EvolutionSettings = PRESETS["tiny"], labels=("2x", "4x"), space=TINY,
                higher_is_better=False, budget=0):
    predictor = FlopsProxy(seq_len=32)
    oracle = LatencyOracle(predictor)
    targets = resolve_targets(list(labels), predictor, space, Band(), oracle)
    return Proposer(method, settings, space, targets, oracle, higher_is_better, budget=budget)


def run(out_dir, fitness, method="evolution", stop_after=0, **kw):
    proposer = make_search(method, **kw)
    spec = LoopSpec(out_dir=out_dir, seed=7, fingerprint={"method": method}, stop_after_generation=stop_after,
                    progress=False, plot=False)
    return run_search_loop(spec, proposer, fitness, LocalComm()), proposer


def comparable(state) -> dict:
    return {"evaluated": {a.name: (r.score, r.latency, r.generation) for a, r in state.evaluated.items()},
            "proposed": {k: [a.name for a in v] for k, v in state.proposed.items()},
            "generation": state.generation, "rng": state.rng_state}


# ---- settings, targets, sampling ------------------------------------------------------------------
def test_presets_validate_and_budget_counts_every_proposal():
    for settings in PRESETS.values():
        settings.validate()
    hat = PRESETS["hat"]
    assert (hat.population, hat.parents, hat.mutations, hat.crossovers, hat.mutation_prob, hat.generations) == (
        125, 25, 50, 50, 0.3, 30)
    assert hat.budget() == 125 + 29 * 100
    assert settings_from("hat", {"generations": 2, "parents": None}).generations == 2
    with pytest.raises(ValueError, match="mutation_prob"):
        settings_from("hat", {"mutation_prob": 1.5})
    with pytest.raises(ValueError, match="unknown --preset"):
        settings_from("nope", {})


def test_targets_resolve_relative_to_largest_and_unreachable_bands_fail_early():
    predictor = FlopsProxy(32)
    oracle = LatencyOracle(predictor)
    (t,) = resolve_targets(["4x"], predictor, TINY, Band(0.85, 1.1), oracle)
    assert t.ms == pytest.approx(oracle.one(TINY.largest()) / 4)
    assert (t.low, t.high) == pytest.approx((0.85 * t.ms, 1.1 * t.ms))
    with pytest.raises(ValueError, match="misses the space"):
        resolve_targets(["1000x"], predictor, TINY, Band(), oracle)
    with pytest.raises(ValueError, match="no milliseconds"):
        resolve_targets(["3ms"], predictor, TINY, Band(), oracle)
    with pytest.raises(ValueError, match="twice"):
        resolve_targets(["2x", "2x"], predictor, TINY, Band(), oracle)


@pytest.mark.parametrize("name", ["mlm", "kd", "tiny"])
def test_fast_rule_sampling_and_step_mutation_stay_in_the_space(name):
    space = SearchSpace.load(name)
    rng = random.Random(0)
    for _ in range(200):
        arch = sample_fast(space, rng)
        space.validate(arch)
        assert is_fast_arch(arch), arch
        child = step_mutate(space, arch, rng, 0.5)
        space.validate(child)
        for field in ("layers", "hidden", "ffn"):  # at most two steps along the field's range
            values = getattr(space, field).values()
            assert abs(values.index(getattr(child, field)) - values.index(getattr(arch, field))) <= 2


def test_fast_rule_on_a_space_without_fast_archs_is_a_clear_error():
    space = SearchSpace.from_spec({"name": "no_fast", "layers": {"min": 1, "max": 2}, "hidden": {"min": 64, "max": 64},
                                   "heads": {"min": 1, "max": 2}, "head_dim": 32, "ffn": {"min": 256, "max": 256}})
    with pytest.raises(BandUnreachable, match="AutoTinyBERT-Fast"):
        sample_fast(space, random.Random(0))


def test_work_is_balanced_by_cost_and_deterministic():
    rng = random.Random(0)
    archs = [SearchSpace.load("mlm").sample(rng) for _ in range(40)]
    owners = assign(archs, 2)
    assert owners == assign(list(archs), 2)
    loads = [sum(evaluation_cost(a) for a, o in zip(archs, owners) if o == r) for r in range(2)]
    assert max(loads) / min(loads) < 1.01  # dealing them round-robin leaves a 4.5% gap on this sample
    assert assign(archs, 1) == [0] * 40


# ---- the search loop -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["evolution", "random", "fast"])
def test_every_pick_satisfies_its_band_the_space_and_the_method_rule(tmp_path, method):
    state, proposer = run(tmp_path, CountingFitness(), method)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "complete"
    for t, target in zip(results["targets"], proposer.targets):
        best = Arch.from_dict(t["best"]["arch"])
        TINY.validate(best)
        assert target.low <= proposer.oracle.one(best) <= target.high
        assert t["best"]["score"] == pytest.approx(analytic_loss(best))
        in_band = [a for a, r in state.evaluated.items() if target.contains(r.latency) and proposer.is_candidate(a)]
        assert t["best"]["score"] == min(analytic_loss(a) for a in in_band)  # the best of what was evaluated
        depths = sorted({a.layers for a in in_band})
        assert [row["arch"]["layers"] for row in t["best_per_depth"]] == depths
        for row in t["best_per_depth"]:
            assert row["score"] == min(analytic_loss(a) for a in in_band if a.layers == row["arch"]["layers"])
        assert t["best"] in t["best_per_depth"]
        if method == "fast":
            assert is_fast_arch(best)
    lines = (tmp_path / "candidates.jsonl").read_text().splitlines()
    assert len(lines) == len(state.evaluated) == len({json.loads(x)["name"] for x in lines})


def test_targets_share_one_cache_and_nothing_is_evaluated_twice(tmp_path):
    fitness = CountingFitness()
    state, proposer = run(tmp_path, fitness, labels=("2x", "3x", "4x"))
    assert len(fitness.calls) == len(set(fitness.calls)) == len(state.evaluated) == state.computed
    proposed = [a for archs in state.proposed.values() for a in archs]
    assert set(state.evaluated) == set(proposed) | {TINY.largest()}  # the largest: the sanity reference
    _, lines = read_journals(tmp_path)
    assert lines == len(fitness.calls)


def test_stopped_and_resumed_search_ends_exactly_like_an_uninterrupted_one(tmp_path):
    whole, _ = run(tmp_path / "whole", CountingFitness())
    first = CountingFitness()
    part, _ = run(tmp_path / "split", first, stop_after=1)
    assert part.generation == 1
    assert json.loads((tmp_path / "split" / "results.json").read_text())["status"] == "in progress"
    second = CountingFitness()
    resumed, _ = run(tmp_path / "split", second)
    assert comparable(resumed) == comparable(whole)
    assert not set(first.calls) & set(second.calls)
    assert len(first.calls) + len(second.calls) == len(whole.evaluated)
    again = CountingFitness()
    run(tmp_path / "split", again)  # a finished search re-run evaluates nothing
    assert again.calls == []


def test_killed_mid_generation_resumes_from_the_journal_without_recomputing(tmp_path):
    whole, _ = run(tmp_path / "whole", CountingFitness())
    killed = CountingFitness(fail_after=len(whole.evaluated) - 4)  # dies inside the last generation
    with pytest.raises(EvaluationFailed, match="simulated kill"):
        run(tmp_path / "killed", killed)
    committed = json.loads((tmp_path / "killed" / "state.json").read_text())["generation"]
    assert committed < whole.generation
    resumed_fitness = CountingFitness()
    resumed, _ = run(tmp_path / "killed", resumed_fitness)
    assert comparable(resumed) == comparable(whole)
    assert not set(killed.calls) & set(resumed_fitness.calls)
    _, lines = read_journals(tmp_path / "killed")
    assert lines == len(killed.calls) + len(resumed_fitness.calls) == len(whole.evaluated) == resumed.computed
    evaluations = json.loads((tmp_path / "killed" / "results.json").read_text())["evaluations"]
    assert evaluations == {"unique_archs": len(whole.evaluated), "computed": len(whole.evaluated)}


def test_resuming_with_other_settings_is_refused(tmp_path):
    run(tmp_path, CountingFitness(), stop_after=1)
    proposer = make_search()
    spec = LoopSpec(out_dir=tmp_path, seed=7, fingerprint={"method": "random"}, progress=False, plot=False)
    with pytest.raises(ValueError, match="other settings"):
        run_search_loop(spec, proposer, CountingFitness(), LocalComm())


def test_evolution_explores_and_improves_over_its_first_generation(tmp_path):
    settings = EvolutionSettings(population=6, parents=3, mutations=4, crossovers=4, generations=6, mutation_prob=0.5)
    state, proposer = run(tmp_path, CountingFitness(), settings=settings, labels=("3x",))
    first = [r.score for r in state.evaluated.values() if r.generation == 0 and proposer.targets[0].contains(r.latency)]
    best = proposer.ranked(proposer.targets[0], state.evaluated)[0]
    assert best.score <= min(first)
    assert len(state.history) == 6 and all(h["computed"] >= 1 for h in state.history[1:])


def test_sanity_report_flags_a_supernet_whose_largest_arch_is_not_best(tmp_path):
    run(tmp_path / "ok", CountingFitness())
    ok = json.loads((tmp_path / "ok" / "results.json").read_text())["sanity"]
    assert ok["largest_is_best"] and "warning" not in ok
    inverted = CountingFitness(fn=lambda a: -analytic_loss(a))  # smaller archs 'better': a broken supernet
    run(tmp_path / "bad", inverted)
    bad = json.loads((tmp_path / "bad" / "results.json").read_text())["sanity"]
    assert not bad["largest_is_best"] and bad["archs_scoring_better_than_largest"] > 0 and "warning" in bad


def test_higher_is_better_fitness_is_maximised(tmp_path):
    state, proposer = run(tmp_path, CountingFitness(fn=lambda a: -analytic_loss(a)), higher_is_better=True)
    for target in proposer.targets:
        in_band = [r for r in state.evaluated.values() if target.contains(r.latency)]
        assert proposer.ranked(target, state.evaluated)[0].score == max(r.score for r in in_band)


def test_pareto_front_is_monotone():
    rng = random.Random(0)
    from atb.search.evolution import Record

    records = [Record(TINY.sample(rng), rng.random(), rng.random(), 0, 0.0) for _ in range(50)]
    front = pareto_front(records, higher_is_better=False)
    assert [r.latency for r in front] == sorted(r.latency for r in front)
    assert all(a.score > b.score for a, b in zip(front, front[1:]))
    for r in records:  # nothing off the front dominates a front point
        assert not any(r.latency < f.latency and r.score < f.score for f in front)


def test_search_with_a_saved_atb_latency_predictor_and_ms_targets(tmp_path):
    from atb.latency.predictor import FitOptions, LatencyPredictor
    from atb.search.targets import load_predictor

    rng = random.Random(0)
    archs = list({TINY.sample(rng) for _ in range(60)})
    measured = FlopsProxy(16).predict(archs) * 1e4 + 0.2  # a plausible 'ms' law: fixed cost + FLOPs
    predictor = LatencyPredictor.fit(archs, measured, TINY.to_spec(), {"device": "cpu", "batch": 1, "seq": 16},
                                     options=FitOptions(ensemble=1, ridge=1e-3))
    predictor.save(tmp_path / "predictor")
    loaded = load_predictor(str(tmp_path / "predictor"), seq_len=16)
    oracle = LatencyOracle(loaded)
    middle = float(sorted(measured)[len(measured) // 2])
    (target,) = resolve_targets([f"{middle:.3f}ms"], loaded, TINY, Band(), oracle)
    assert target.ms == pytest.approx(middle, abs=1e-3)
    proposer = Proposer("evolution", PRESETS["tiny"], TINY, [target], oracle, higher_is_better=False)
    spec = LoopSpec(out_dir=tmp_path / "out", seed=0, fingerprint={}, progress=False, plot=False)
    state = run_search_loop(spec, proposer, CountingFitness(), LocalComm())
    best = proposer.ranked(target, state.evaluated)[0]
    assert target.low <= float(loaded.predict([best.arch])[0]) <= target.high


def test_fitness_auto_searches_a_distilled_superplm_by_its_kd_loss_to_its_own_teacher():
    """The MLM head of a SuperPLM distilled from a teacher was never trained: its default fitness is the KD loss
    to the recorded teacher (or to --teacher), and a SuperPLM trained with MLM keeps the MLM loss."""
    from atb.search.config import SearchConfig

    distilled = {"objective": "kd", "teacher": "/runs/pre/source_ordered"}
    cfg = SearchConfig(checkpoint="ck")
    cfg.adopt_fitness(distilled)
    assert (cfg.fitness, cfg.teacher) == ("kd", "/runs/pre/source_ordered")
    cfg = SearchConfig(checkpoint="ck", teacher="other")
    cfg.adopt_fitness(distilled)
    assert (cfg.fitness, cfg.teacher) == ("kd", "other")
    cfg = SearchConfig(checkpoint="ck", fitness="cka")
    cfg.adopt_fitness(distilled)
    assert (cfg.fitness, cfg.teacher) == ("cka", "/runs/pre/source_ordered")
    cfg = SearchConfig(checkpoint="ck")
    cfg.adopt_fitness({"objective": "mlm"})
    assert (cfg.fitness, cfg.teacher) == ("mlm", None)
    with pytest.raises(ValueError, match="--fitness kd needs --teacher"):
        SearchConfig(checkpoint="ck", fitness="kd").adopt_fitness({"objective": "mlm"})

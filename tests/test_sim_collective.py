"""The simulator (tiny runs): code paths of every mode and the direction of the effects."""

from __future__ import annotations

import math

import numpy as np
import pytest

from p2pgolf.pool.bandit import BanditConfig
from p2pgolf.pool.simulation import HARDWARE, MODES, Landscape, NodeTrace, RunResult, SimSettings, experiments_to_reach, isolated_bandit_reference, isolated_reference, run_mode, summarise
from p2pgolf.protocol import knobs

TINY = SimSettings(nodes=3, experiments=20)


@pytest.fixture(scope="module")
def tiny_runs():
    return {mode: [run_mode(mode, seed, TINY) for seed in (0, 1, 2)] for mode in MODES}


@pytest.fixture(scope="module")
def searching_runs():
    """The same tiny runs without top-two sampling (no runs set aside to confirm the leader)."""
    searching = SimSettings(nodes=TINY.nodes, experiments=TINY.experiments, bandit=BanditConfig(leader_share=0.0))
    return {mode: [run_mode(mode, seed, searching) for seed in (0, 1, 2)] for mode in ("trust", "naive")}


def test_the_landscape_rewards_composed_architecture_gains_and_punishes_slow_hardware_defaults():
    land = Landscape.seeded(0)
    base = knobs.base_config("naive-baseline")
    swiglu = {**base, "activation": "swiglu"}
    mirror = {**base, "unique_blocks": 3, "recurrence": "mirror"}
    both = {**base, "activation": "swiglu", "unique_blocks": 3, "recurrence": "mirror"}
    fast, slow = HARDWARE[0].key, HARDWARE[-1].key
    gain = lambda c: land.true_bpb(base, fast) - land.true_bpb(c, fast)  # noqa: E731
    assert gain(both) > gain(swiglu) + gain(mirror)  # composing beats the sum of the parts
    small_batch = {**base, "train_batch_tokens": 1 << 15, "warmdown_frac": 0.65}
    assert land.true_bpb(base, slow) - land.true_bpb(small_batch, slow) > 0.1  # worth a lot on slow hardware
    assert land.true_bpb(small_batch, fast) > land.true_bpb(base, fast)  # and harmful on fast hardware
    for hw in (fast, slow):
        assert land.optimum(hw) <= min(land.true_bpb(c, hw) for c in (base, swiglu, mirror, both, small_batch))


def test_every_mode_runs_and_records_one_value_per_experiment(tiny_runs):
    for mode, runs in tiny_runs.items():
        for run in runs:
            assert len(run.traces) == TINY.nodes
            for t in run.traces:
                assert len(t.incumbent_true) == TINY.experiments
                assert len(t.ran) == TINY.experiments
                assert all(math.isfinite(v) for v in t.incumbent_true)
                assert t.final_true >= run.optimum[t.hw] - 1e-9


def test_the_simulator_is_deterministic_for_a_seed():
    a = run_mode("malicious", 5, SimSettings(nodes=2, experiments=6))
    b = run_mode("malicious", 5, SimSettings(nodes=2, experiments=6))
    assert [t.ran for t in a.traces] == [t.ran for t in b.traces]
    assert [t.incumbent_true for t in a.traces] == [t.incumbent_true for t in b.traces]


def test_hardware_adjusted_trust_beats_naive_pooling_when_classes_disagree(tiny_runs):
    trust = summarise(tiny_runs["trust"])
    naive = summarise(tiny_runs["naive"])
    assert trust.regret < naive.regret


def test_hardware_adjusted_trust_halves_naive_poolings_regret_in_search_alone(searching_runs):
    # the estimator's effect alone: without top-two sampling, which in a 20-experiment run
    # spends most of the second half confirming the leader rather than searching
    assert summarise(searching_runs["trust"]).regret < 0.5 * summarise(searching_runs["naive"]).regret


def test_collective_search_beats_searching_alone(tiny_runs):
    alone = summarise(tiny_runs["isolated_hillclimb"])
    together = summarise(tiny_runs["trust"])
    assert together.final_true < alone.final_true
    hits = [h for c, ref in zip(tiny_runs["trust"], tiny_runs["isolated_hillclimb"]) for h in experiments_to_reach(c, ref)]
    assert np.mean(hits) < TINY.experiments


def test_fakes_cost_few_honest_experiments_and_none_once_blocked(tiny_runs):
    # a fake is published every round; a stranger's claim is worth one run, and once a
    # reproduction refutes it the key's other claims are not tried (see test_bandit)
    fakes_published = TINY.experiments
    spent = sum(sum(t.on_fake) for run in tiny_runs["malicious"] for t in run.traces) / len(tiny_runs["malicious"])
    assert spent <= 0.1 * fakes_published
    assert summarise(tiny_runs["malicious"]).malicious_share <= 0.05
    assert summarise(tiny_runs["malicious_blocked"]).malicious_share == 0.0


def test_top_two_sampling_spends_more_of_the_runs_on_the_eventual_winner(tiny_runs, searching_runs):
    plain = summarise(searching_runs["trust"])
    top_two = summarise(tiny_runs["trust"])
    assert top_two.winner_share > plain.winner_share + 0.1
    assert top_two.winner_share_strict > plain.winner_share_strict


def test_the_reference_adds_independent_isolated_runs_to_mode_one():
    settings = SimSettings(nodes=3, experiments=12)
    alone = run_mode("isolated_hillclimb", 4, settings)
    reference = isolated_reference(4, settings, runs=5)
    per_class = {}
    for t in reference.traces:
        per_class.setdefault(t.hw, []).append(t)
    assert sorted(per_class) == sorted(h.key for h in HARDWARE)
    assert all(len(ts) == 5 for ts in per_class.values())
    # mode 1's runs are the first ones (same hardware, same random streams)...
    for own, ref in zip(alone.traces, reference.traces):
        assert (own.hw, own.ran, own.incumbent_true) == (ref.hw, ref.ran, ref.incumbent_true)
    # ...and the added runs are independent searches, not copies
    for ts in per_class.values():
        assert len({tuple(t.ran) for t in ts}) == len(ts)
    with pytest.raises(ValueError, match="at least one reference run"):
        isolated_reference(4, settings, runs=0)


def _trace(hw: str, curve: list[float]) -> NodeTrace:
    return NodeTrace(hw, incumbent_true=list(curve), final_true=curve[-1])


def test_experiments_to_reach_times_each_node_against_its_class_summary_of_the_reference():
    fast, slow = HARDWARE[0].key, HARDWARE[-1].key
    # the fast class's isolated finals: mean 1.4, median 1.2; the slow class's: 2.0
    reference = RunResult("isolated_hillclimb", 0, [_trace(fast, [1.0]), _trace(fast, [1.2]), _trace(fast, [2.0]), _trace(slow, [2.0])], {})
    collective = RunResult("trust", 0, [_trace(fast, [1.5, 1.3, 1.25, 1.1]), _trace(slow, [2.5, 2.2, 2.1, 2.05])], {})
    assert experiments_to_reach(collective, reference) == [2, 5]  # 1.3 <= 1.4 after two; the slow node never (len + 1)
    assert experiments_to_reach(collective, reference, "median") == [4, 5]  # 1.1 <= 1.2 only after four
    with pytest.raises(ValueError, match="unknown statistic"):
        experiments_to_reach(collective, reference, "max")


def test_the_isolated_bandit_reference_adds_independent_bandit_runs_to_mode_two():
    settings = SimSettings(nodes=3, experiments=8)
    alone = run_mode("isolated_bandit", 4, settings)
    reference = isolated_bandit_reference(4, settings, runs=2)
    assert len(reference.traces) == 6 and {t.hw for t in reference.traces} == {h.key for h in HARDWARE}
    for own, ref in zip(alone.traces, reference.traces):
        assert (own.hw, own.ran, own.incumbent_true) == (ref.hw, ref.ran, ref.incumbent_true)
    assert reference.traces[0].ran != reference.traces[3].ran  # same class, another search
    with pytest.raises(ValueError, match="at least one reference run"):
        isolated_bandit_reference(4, settings, runs=0)


def _benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sim_collective.py"
    spec = importlib.util.spec_from_file_location("sim_collective_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_judges_the_collective_against_the_isolated_bandit_by_its_definitions():
    bench = _benchmark()
    from p2pgolf.pool.landscapes import Scenario

    fast, slow = HARDWARE[0].key, HARDWARE[-1].key
    optimum = {fast: 1.0, slow: 2.0}

    def node(hw, curve, ops):
        return NodeTrace(hw, incumbent_true=list(curve), final_true=curve[-1], operators=list(ops), ran=["x"] * len(ops))

    collective, bandit_ref, hill_ref = {}, {}, {}
    for seed, (slow_final, slow_alone) in enumerate(((2.04, 2.02), (2.02, 2.04))):
        collective[seed] = RunResult("trust", seed, [node(fast, [1.2, 1.05, 1.01], ["mutate", "replicate", "replicate"]), node(slow, [2.3, 2.1, slow_final], ["mutate", "mutate", "replicate"])], optimum)
        # the isolated bandit's expected result: fast 1.03 (mean of 1.02 and 1.04), slow as given
        bandit_ref[seed] = RunResult("isolated_bandit", seed, [node(fast, [1.02], ["m"]), node(fast, [1.04], ["m"]), node(slow, [slow_alone], ["m"])], optimum)
        hill_ref[seed] = RunResult("isolated_hillclimb", seed, [node(fast, [1.1], ["m"]), node(slow, [2.2], ["m"])], optimum)
    r = bench.judge(Scenario("t"), [0, 1], collective, bandit_ref, hill_ref, 3)
    # fast hits 1.03 after 3 experiments; slow hits 2.02 never in seed 0 (4 = K + 1), after 3 in seed 1
    assert r["exps_vs_isolated_bandit"] == pytest.approx(np.mean([np.mean([3, 4]), np.mean([3, 3])]))
    assert r["exps_vs_isolated_bandit_se"] == pytest.approx(np.std([3.5, 3.0], ddof=1) / np.sqrt(2))
    assert r["replicate_share"] == pytest.approx(0.5)
    assert r["duplicate_share"] == 0.0  # one node per class
    f, s = r["classes"][fast], r["classes"][slow]
    assert f["collective_regret"] == pytest.approx(0.01) and f["isolated_bandit_regret"] == pytest.approx(0.03)
    assert f["paired_difference"] == pytest.approx(-0.02) and f["class_ratio"] == pytest.approx(1 / 3)
    # the slow class: +0.02 then -0.02 over the seeds: no mean difference, ratio 1
    assert s["paired_difference"] == pytest.approx(0.0) and s["paired_difference_se"] == pytest.approx(0.02)
    assert s["class_ratio"] == pytest.approx(1.0)
    # per class: fast hits after 3 in both seeds; slow never (4) then after 3
    assert f["exps_vs_isolated_bandit"] == pytest.approx(3.0) and s["exps_vs_isolated_bandit"] == pytest.approx(3.5)
    assert r["worst_class_ratio"] == pytest.approx(1.0)
    # z: the slow class's mean difference is 0 (z 0); the fast one's has no spread (no z)
    assert s["paired_z"] == pytest.approx(0.0) and np.isnan(f["paired_z"]) and r["worst_class_paired_z"] == pytest.approx(0.0)
    assert r["exps_vs_isolated_hillclimb"] == pytest.approx(2.0)  # 1.05 <= 1.1 and 2.1 <= 2.2 after two
    assert "narrow_well" not in r  # only narrow landscapes have a well to find


def test_a_duplicate_is_a_candidate_another_node_of_the_class_trains_in_the_same_round():
    bench = _benchmark()
    fast, slow = HARDWARE[0].key, HARDWARE[-1].key
    nodes = [NodeTrace(fast, ran=["a", "b", "c"]), NodeTrace(fast, ran=["a", "c", "b"]), NodeTrace(fast, ran=["a", "d", "e"]), NodeTrace(slow, ran=["a", "b", "c"])]
    # round 0: three fast nodes train "a" (2 duplicates; the slow node's "a" is another class's); rounds 1-2: none
    assert bench.same_round_duplicates(RunResult("trust", 0, nodes, {})) == pytest.approx(2 / 12)


def test_the_benchmark_counts_final_incumbents_in_the_narrow_well_for_the_collective_and_alone():
    bench = _benchmark()
    from p2pgolf.pool.landscapes import Scenario, make_landscape
    from p2pgolf.pool.simulation import BASE

    fast, slow = HARDWARE[0].key, HARDWARE[-1].key

    def node(hw, momentum_in_well: bool, seed: int):
        land = make_landscape("narrow", seed)
        m = land.narrow_at + (0.5 if momentum_in_well else 5.0) * land.narrow_width
        return NodeTrace(hw, incumbent_true=[1.0], final_true=1.0, operators=["mutate"], ran=["x"], final_config={**knobs.base_config(BASE), "muon_momentum": m})

    optimum = {fast: 0.9, slow: 0.9}
    collective = {s: RunResult("trust", s, [node(fast, True, s), node(slow, s == 0, s)], optimum) for s in (0, 1)}
    # the reference also holds a class the collective lacks: it does not count
    bandit_ref = {s: RunResult("isolated_bandit", s, [node(fast, False, s), node(fast, False, s), node(slow, True, s), node(HARDWARE[1].key, True, s)], optimum) for s in (0, 1)}
    hill_ref = {s: RunResult("isolated_hillclimb", s, [node(fast, False, s), node(slow, False, s)], optimum) for s in (0, 1)}
    w = bench.judge(Scenario("t", "narrow"), [0, 1], collective, bandit_ref, hill_ref, 1)["narrow_well"]
    # collective: 2 of 2 nodes in seed 0, 1 of 2 in seed 1; alone: 1 of 3 in each
    assert w["collective_share"] == pytest.approx(0.75) and w["isolated_bandit_share"] == pytest.approx(1 / 3)
    assert w["paired_difference"] == pytest.approx(0.75 - 1 / 3) and w["paired_difference_se"] == pytest.approx(np.std([1 - 1 / 3, 0.5 - 1 / 3], ddof=1) / np.sqrt(2))


def test_each_trace_keeps_the_config_its_final_incumbent_is_valued_at():
    from p2pgolf.pool.landscapes import make_landscape

    settings = SimSettings(nodes=2, experiments=5, landscape="narrow")
    land = make_landscape("narrow", 4)
    for mode in ("trust", "isolated_hillclimb"):
        for t in run_mode(mode, 4, settings).traces:
            assert t.final_config and land.true_bpb(t.final_config, t.hw) == pytest.approx(t.final_true)


def test_another_random_stream_searches_the_same_landscape_independently():
    settings = SimSettings(nodes=2, experiments=6)
    usual = run_mode("isolated_bandit", 3, settings)
    other = run_mode("isolated_bandit", 3, SimSettings(nodes=2, experiments=6, rng_stream=1))
    assert usual.optimum == other.optimum  # the same landscape
    assert [t.ran for t in usual.traces] != [t.ran for t in other.traces]  # another search on it
    again = run_mode("isolated_bandit", 3, SimSettings(nodes=2, experiments=6, rng_stream=1))
    assert [t.incumbent_true for t in other.traces] == [t.incumbent_true for t in again.traces]


def test_the_benchmark_parses_variants_over_the_three_settings_and_rejects_the_rest():
    import click

    bench = _benchmark()
    v = bench.parse_variant("confirm_cap=6, knob_transfer_sd=0.05,announce=false,floor_margin=inf")
    assert v == {"confirm_cap": 6, "knob_transfer_sd": 0.05, "announce": False, "floor_margin": math.inf}
    s = bench.with_variant(SimSettings(), v)
    assert (s.bandit.confirm_cap, s.estimator.knob_transfer_sd, s.announce, s.bandit.floor_margin) == (6, 0.05, False, math.inf)
    assert s.bandit.leader_share == BanditConfig().leader_share  # the rest stays the default
    for bad in ("no_such_knob=1", "confirm_cap", "landscape=narrow", "confirm_cap=six", ""):
        with pytest.raises(click.BadParameter):
            bench.parse_variant(bad)


def test_the_benchmark_pairs_a_variant_with_the_default_seed_by_seed():
    bench = _benchmark()
    default = {"a": {"per_seed_exps": [10.0, 20.0], "per_seed_regret": [0.02, 0.04], "worst_class_ratio": 1.2}, "b": {"per_seed_exps": [30.0, 30.0], "per_seed_regret": [0.01, 0.01], "worst_class_ratio": 0.9}}
    variant = {"a": {"per_seed_exps": [8.0, 20.0], "per_seed_regret": [0.01, 0.04], "worst_class_ratio": 1.1}, "b": {"per_seed_exps": [26.0, 30.0], "per_seed_regret": [0.01, 0.01], "worst_class_ratio": 0.8}}
    p = bench.paired(default, variant, ["a", "b"])
    # per seed, the mean over scenarios of the differences: (-2 - 4) / 2 = -3, then 0
    assert p["exps_diff"] == pytest.approx(-1.5)
    assert p["exps_diff_se"] == pytest.approx(np.std([-3.0, 0.0], ddof=1) / np.sqrt(2))
    assert p["regret_diff"] == pytest.approx(-0.0025)
    assert p["scenarios"]["a"]["exps_diff"] == pytest.approx(-1.0) and p["scenarios"]["b"]["worst_class_ratio"] == 0.8


def test_the_simulator_credits_each_outcome_with_its_prediction_not_its_cost(monkeypatch):
    from p2pgolf.pool import bandit

    seen = []
    real = bandit.over_promise

    def spy(history, available, config=BanditConfig()):
        seen.extend(history)
        return real(history, available, config)

    monkeypatch.setattr(bandit, "over_promise", spy)
    run_mode("trust", 1, SimSettings(nodes=2, experiments=10, bandit=BanditConfig(calibrate=True)))
    assert seen and all(o.cost == 1.0 and o.experiment is True for o in seen)
    assert any(math.isfinite(o.predicted) and math.isfinite(o.realised) for o in seen)  # calibrate has something to charge

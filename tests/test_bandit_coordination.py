"""The bandit's calibration and coordination (issue 14): settled leaders are not re-measured,
peers' running experiments are not duplicated, the operator floor does not run what the model
expects to be clearly worse (nor, on a node alone on its class, a foreign candidate whose mean is
worse than the incumbent's), foreign candidates can be scored at their own temperature, and
over-promising operators are charged at the meta level."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from p2pgolf.pool.bandit import BanditConfig, Outcome, choose, over_promise
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.trust_weights import static_status
from test_bandit import FRIEND, HW, ME, STRANGER, Pool

PEER_HW = "gpu:peer"


def _settled_leader(runs: int):
    """An incumbent measured `runs` times here, a runner-up close behind measured twice."""
    pool = Pool()
    root = pool.add({}, 2.00)
    leader = pool.add({"matrix_lr": 0.03}, 1.950, parents=[root.record_id])
    for _ in range(runs - 1):
        pool.attest(leader.record_id, 1.950)
    runner_up = pool.add({"matrix_lr": 0.05}, 1.951, parents=[root.record_id])
    pool.attest(runner_up.record_id, 1.952)
    return pool, leader, runner_up


def test_a_leader_at_the_noise_floor_is_not_measured_again_but_its_challenger_may_be():
    pool, leader, runner_up = _settled_leader(6)
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.incumbent() == leader.candidate
    always = BanditConfig(leader_share=1.0, confirm_cap=math.inf)
    capped = BanditConfig(leader_share=1.0)  # the default cap: six runs here
    before = Counter((c.proposal.operator, c.proposal.candidate) for c in (choose(post, np.random.default_rng(s), config=always) for s in range(40)))
    after = Counter((c.proposal.operator, c.proposal.candidate) for c in (choose(post, np.random.default_rng(s), config=capped) for s in range(40)))
    assert before[("replicate", leader.candidate)] == 40
    assert after[("replicate", leader.candidate)] == 0
    assert after[("replicate", runner_up.candidate)] > 0  # top-two's challenger, when a draw favours it


def test_a_peers_running_re_measurement_counts_towards_the_cap():
    pool, leader, _ = _settled_leader(4)
    post = estimate(pool.evidence, static_status(ME), HW)
    config = BanditConfig(leader_share=1.0, confirm_cap=6)
    alone = [choose(post, np.random.default_rng(s), config=config).proposal for s in range(30)]
    assert all(p.candidate == leader.candidate for p in alone)  # four runs: not settled yet
    busy = [choose(post, np.random.default_rng(s), config=config, running=[leader.candidate, leader.candidate]).proposal for s in range(30)]
    assert not any(p.operator == "replicate" and p.candidate == leader.candidate for p in busy)


def test_a_candidate_a_peer_is_training_now_is_not_proposed_again():
    pool = Pool()
    mine = pool.add({}, 2.00)
    better = pool.add({"matrix_lr": 0.03}, 1.90, author=STRANGER)
    other = pool.add({"matrix_lr": 0.05}, 1.95, author=STRANGER)
    post = estimate(pool.evidence, static_status(ME), HW)
    free = Counter(choose(post, np.random.default_rng(s), operators=("try_peer",)).proposal.candidate for s in range(30))
    busy = Counter(choose(post, np.random.default_rng(s), operators=("try_peer",), running=[better.candidate]).proposal.candidate for s in range(30))
    assert free[better.candidate] > 0
    assert busy[better.candidate] == 0 and busy[other.candidate] == 30
    assert mine.candidate not in busy


def test_the_operator_floor_does_not_run_an_arm_expected_to_be_clearly_worse():
    pool = Pool()
    root = pool.add({}, 2.00)
    pool.attest(root.record_id, 2.001)
    # a pinned peer's candidate on its own class, far worse than anything here once translated
    # (a stranger's candidate is no operator's arm at all: test_claims_under_attack.py)
    pool.add({}, 1.70, author=FRIEND, hw=PEER_HW)
    pool.add({"matrix_lr": 0.03}, 2.30, author=FRIEND, hw=PEER_HW)
    post = estimate(pool.evidence, static_status(ME, pinned=[FRIEND]), HW)
    ops = ("mutate", "try_peer")
    floor = BanditConfig(leader_share=0.0, min_share=0.25, floor_foreign=False)
    guarded = BanditConfig(leader_share=0.0, min_share=0.25, floor_margin=2.0, floor_foreign=False)
    plain = Counter(choose(post, np.random.default_rng(s), config=floor, operators=ops).proposal.operator for s in range(60))
    kept = Counter(choose(post, np.random.default_rng(s), config=guarded, operators=ops).proposal.operator for s in range(60))
    assert plain["try_peer"] >= 5  # the floor forces the worse arm now and then
    assert kept["try_peer"] == 0


def test_over_promising_operators_are_charged_what_they_fell_short_by():
    history = [Outcome("recombine", False, 0.0, predicted=0.05, realised=-0.05) for _ in range(8)]
    history += [Outcome("mutate", True, 0.01, predicted=0.01, realised=0.01) for _ in range(8)]
    history += [Outcome("replicate", False, 0.0, predicted=0.03, realised=-0.03)]
    history += [Outcome("try_peer", False)]  # nothing promised on record: nothing charged
    over = over_promise(history, ["recombine", "mutate", "replicate", "try_peer"])
    assert over["recombine"] == pytest.approx(8 * 0.1 / 10)  # shrunk by two pseudo-runs
    assert over["mutate"] == 0.0 and over["replicate"] == 0.0 and over["try_peer"] == 0.0
    lucky = over_promise([Outcome("mutate", True, 0.05, predicted=0.0, realised=0.05)] * 4, ["mutate"])
    assert lucky["mutate"] == 0.0  # luck is never rewarded twice
    assert math.isfinite(over["recombine"])


def _lone_node_pool(peer_value: float):
    """A node alone on its class: its own root measured twice here, and a pinned peer's root and
    child on the peer's class (the child, translated over the shared root, lands near
    `peer_value` + 0.30 here)."""
    pool = Pool()
    root = pool.add({}, 2.00)
    pool.attest(root.record_id, 2.001)
    peer_root = pool.add({}, 1.70, author=FRIEND, hw=PEER_HW)
    child = pool.add({"matrix_lr": 0.03}, peer_value, author=FRIEND, hw=PEER_HW, parents=[peer_root.record_id])
    return estimate(pool.evidence, static_status(ME, pinned=[FRIEND]), HW), root, child


def test_the_floor_does_not_force_a_foreign_candidate_the_model_expects_to_be_worse():
    post, root, child = _lone_node_pool(2.30)
    assert post.incumbent() == root.candidate
    assert post.estimate(child.candidate).mean > post.estimate(root.candidate).mean
    ops = ("mutate", "try_peer")
    plain = BanditConfig(leader_share=0.0, min_share=0.25, floor_foreign=False)
    guarded = BanditConfig(leader_share=0.0, min_share=0.25)  # floor_foreign is on by default
    forced = Counter(choose(post, np.random.default_rng(s), config=plain, operators=ops).proposal.operator for s in range(60))
    kept = Counter(choose(post, np.random.default_rng(s), config=guarded, operators=ops).proposal.operator for s in range(60))
    assert forced["try_peer"] >= 5  # the floor forces the worse foreign arm now and then
    assert kept["try_peer"] == 0


def test_the_floor_still_forces_a_foreign_candidate_expected_to_be_better():
    post, root, child = _lone_node_pool(1.60)
    assert post.estimate(child.candidate).mean < post.estimate(root.candidate).mean
    ops = ("mutate", "try_peer")
    guarded = BanditConfig(leader_share=0.0, min_share=0.25)
    picks = Counter(choose(post, np.random.default_rng(s), config=guarded, operators=ops).proposal.operator for s in range(60))
    assert picks["try_peer"] >= 5


def test_a_foreign_candidate_is_scored_at_its_mean_with_foreign_temperature_zero():
    post, root, child = _lone_node_pool(1.60)
    config = BanditConfig(leader_share=0.0, min_share=0.0, foreign_temperature=0.0)
    mean = post.estimate(child.candidate).mean
    scores = [choose(post, np.random.default_rng(s), config=config, operators=("try_peer",)).sampled for s in range(10)]
    assert scores == pytest.approx([mean] * 10)
    default = [choose(post, np.random.default_rng(s), config=BanditConfig(leader_share=0.0, min_share=0.0), operators=("try_peer",)).sampled for s in range(10)]
    assert np.std(default) > 1e-4  # by default a foreign candidate's score is a (tempered) draw


def test_a_claim_this_node_re_evaluated_and_refuted_is_never_run_again():
    """The verify operator's case (tests/test_verify_network.py): two strangers' claims, both
    re-evaluated here from their artifacts; one holds, one scores far worse than it claimed. Whatever
    the draw, the next run neither re-runs nor reproduces the refuted claim (the operator floor
    forced it as the only try-peer arm about 5% of the time before `floor_foreign`)."""
    pool = Pool()
    honest = pool.add({}, 2.60, author=STRANGER)
    liar = pool.add({"matrix_lr": 0.03}, 2.30, author=STRANGER)
    pool.attest(honest.record_id, 2.60, method="reeval")
    pool.attest(liar.record_id, 8.0, method="reeval")
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.incumbent() == honest.candidate
    for config, remaining in ((BanditConfig(), 1), (BanditConfig(), None), (BanditConfig(floor_foreign=False), None)):
        picks = [choose(post, np.random.default_rng(s), config=config, remaining=remaining).proposal for s in range(200)]
        on_liar = sum(p.subject == liar.record_id or p.candidate == liar.candidate for p in picks)
        if config.floor_foreign:
            assert on_liar == 0
        else:
            assert on_liar >= 3  # what the rule prevents: the floor's forced try-peer run

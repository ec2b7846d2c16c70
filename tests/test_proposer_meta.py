"""External proposers at the bandit's meta level: a new one is asked first, one that gives
nothing hands the choice to the next operator, its yield is per cost and its losses count, the
floor keeps a starved one re-assessed, and in the simulator a good proposer is fed and lowers
regret while a random one is starved (tiny runs; benchmarks/sim_proposers.py measures it)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from p2pgolf.pool import bandit
from p2pgolf.pool.bandit import BanditConfig, Outcome, choose, gain, leader_probability, operator_draws
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence import Evidence, ResultEvidence
from p2pgolf.pool.proposals import OPERATORS, Proposal
from p2pgolf.pool.proposer_simulation import run_proposers
from p2pgolf.pool.simulation import SimSettings
from p2pgolf.pool.trust_weights import static_status
from p2pgolf.protocol import candidates

ME = hashlib.sha256(b"me").hexdigest()
HW = "cpu:Test CPU:x2"


def _posterior():
    cid = candidates.candidate_id("naive-baseline", {}, "sp1024")
    results = tuple(ResultEvidence(hashlib.sha256(f"r{k}".encode()).hexdigest(), cid, "naive-baseline", {}, ME, HW, 1.22 + 0.001 * k, 600.0, seed=k) for k in range(2))
    return estimate(Evidence(results, ()), static_status(ME), HW, budget_s=600.0)


def _idea(post) -> Proposal:
    diff = {"activation": "swiglu"}
    inc = post.info[post.incumbent()]
    return Proposal("naive-baseline", diff, (inc.representative,), "proposer:x", None, (), candidates.candidate_id("naive-baseline", diff, "sp1024"), "sp1024")


def test_a_new_proposer_is_asked_first_and_an_empty_answer_hands_the_choice_on():
    post = _posterior()
    calls = []
    choice = choose(post, np.random.default_rng(0), external={"proposer:x": lambda: calls.append(1) or []}, config=BanditConfig(leader_share=0.0))
    assert calls == [1] and choice.proposal.operator in OPERATORS
    idea = _idea(post)
    choice = choose(post, np.random.default_rng(0), external={"proposer:x": lambda: [idea]}, config=BanditConfig(leader_share=0.0))
    assert choice.proposal is idea


def test_a_proposer_that_gave_nothing_is_rarely_asked_yet_never_never():
    history = [Outcome("mutate", True, 0.004)] * 10 + [Outcome("proposer:x", False, 0.0, 1.0, experiment=False)] * 20
    rng = np.random.default_rng(1)
    firsts = [bandit._meta_order(operator_draws(history, ["mutate", "proposer:x"], rng), {"mutate": 1.2, "proposer:x": 1.2}, BanditConfig())[0] for _ in range(400)]
    share = firsts.count("proposer:x") / len(firsts)
    assert 0.0 < share < 0.1  # the floor re-assesses it, its record starves it
    assert leader_probability(BanditConfig(horizon=40), sum(o.experiment for o in history)) == leader_probability(BanditConfig(horizon=40), 10)


def test_yield_is_per_cost_and_a_proposer_s_losses_count_against_it():
    def mean_draw(history, op):
        rng = np.random.default_rng(2)
        draws = [operator_draws(history, ["mutate", op], rng, BanditConfig(min_share=0.0))[op] for _ in range(300)]
        return float(np.mean(draws))

    cheap = [Outcome("mutate", False, 0.001)] * 10 + [Outcome("proposer:x", True, 0.006)] * 10
    dear = [Outcome("mutate", False, 0.001)] * 10 + [Outcome("proposer:x", True, 0.006, cost=3.0)] * 10
    assert mean_draw(dear, "proposer:x") < mean_draw(cheap, "proposer:x") / 2
    post = _posterior()
    worse = post.estimate(post.incumbent()).mean + 0.05
    assert gain(_idea(post), worse, post) == pytest.approx(-0.05, abs=0.01)  # a proposer's loss is kept
    builtin = Proposal("naive-baseline", {}, (), "mutate")
    assert gain(builtin, worse, post) == 0.0  # an operator's is clipped, as before
    losing = [Outcome("mutate", False, 0.0)] * 10 + [Outcome("proposer:x", False, -0.05)] * 5
    assert mean_draw(losing, "proposer:x") < mean_draw(losing, "mutate") - 0.005


@pytest.fixture(scope="module")
def tiny():
    settings = SimSettings(nodes=2, experiments=36)
    return {mode: [run_proposers(mode, seed, settings) for seed in (0, 1)] for mode in ("none", "good", "random")}


def test_in_the_simulator_a_good_proposer_is_fed_and_lowers_regret_a_random_one_is_starved(tiny):
    regret = {mode: float(np.mean([r.regret() for r in runs])) for mode, runs in tiny.items()}
    share_after = {mode: float(np.mean([r.share(12) for r in runs])) for mode, runs in tiny.items()}
    assert regret["good"] < regret["none"]
    assert share_after["good"] > share_after["random"]
    assert share_after["random"] < 0.1
    assert all(math.isfinite(r.regret()) for runs in tiny.values() for r in runs)
    assert run_proposers("random", 0, SimSettings(nodes=2, experiments=36)).traces[0].operators == tiny["random"][0].traces[0].operators  # deterministic

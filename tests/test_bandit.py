"""The bandit and its proposal operators, driven by the real estimator."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from evidence_pool import EvidencePool
from p2pgolf.pool.bandit import BanditConfig, MoveModel, Outcome, choose, leader_probability, operator_draws, outcome
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence import Evidence
from p2pgolf.pool.proposals import DEFAULT_SPACE, Dim, make_proposal, mutate, recombine
from p2pgolf.pool.trust_weights import static_status
from p2pgolf.protocol import candidates, knobs
from p2pgolf.protocol.errors import ProtocolError

ME = "a" * 64
FRIEND = "b" * 64
STRANGER = "c" * 64
BASE = "naive-baseline"
HW = "cpu:x"


class Pool(EvidencePool):
    """A growing evidence list with fresh record ids."""


def test_thompson_sampling_concentrates_on_a_clearly_best_arm():
    truth = [1.975, 1.97, 1.975, 1.965, 1.955]  # the best leads by about one noise sd
    pool = Pool()
    root = pool.add({}, 2.02)
    arms = [pool.add({"matrix_lr": 0.01 * (i + 1)}, t, parents=[root.record_id]) for i, t in enumerate(truth)]
    by_candidate = {a.candidate: t for a, t in zip(arms, truth)}
    rng = np.random.default_rng(3)
    config = BanditConfig(max_replicates=math.inf, confirm_cap=math.inf)  # re-measure without limit
    picks = Counter()
    for _ in range(40):
        post = estimate(pool.evidence, static_status(ME), HW)
        choice = choose(post, rng, config=config, operators=("replicate",))
        c = choice.proposal.candidate
        picks[c] += 1
        pool.attest(choice.proposal.subject, by_candidate.get(c, 2.02) + rng.normal(0, 0.008))
    best = arms[-1].candidate
    assert picks[best] >= 0.7 * sum(picks.values()), picks


def test_recombination_produces_a_valid_diff_whose_parents_are_both_recorded():
    pool = Pool()
    root = pool.add({}, 2.00)
    a = pool.add({"activation": "swiglu"}, 1.98, parents=[root.record_id])
    b = pool.add({"unique_blocks": 3, "recurrence": "mirror"}, 1.97, author=FRIEND, parents=[root.record_id])
    post = estimate(pool.evidence, static_status(ME, pinned=[FRIEND]), HW)
    choice = choose(post, np.random.default_rng(0), operators=("recombine",))
    p = choice.proposal
    assert p.operator == "recombine"
    assert dict(p.diff) == {"activation": "swiglu", "recurrence": "mirror", "unique_blocks": 3}
    assert p.parents == tuple(sorted((a.record_id, b.record_id)))
    knobs.resolve(p.base, p.diff)  # raises if invalid
    assert p.candidate == candidates.candidate_id(p.base, p.diff, p.tokenizer)
    # the prior composes both gains over their common ancestor: it is drawn near 1.95
    assert abs(choice.sampled - 1.95) < 0.05


def test_recombination_of_conflicting_diffs_stays_valid_or_declines():
    pool = Pool()
    a = pool.add({"num_layers": 4, "unique_blocks": 4}, 1.9)
    b = pool.add({"num_layers": 12, "unique_blocks": 10}, 1.9)
    post = estimate(pool.evidence, static_status(ME), HW)
    rng = np.random.default_rng(1)
    for _ in range(30):
        p = recombine(post.info[a.candidate], post.info[b.candidate], rng)
        if p is not None:
            config = knobs.resolve(p.base, p.diff)
            assert config["unique_blocks"] <= config["num_layers"]


def test_mutations_are_valid_one_knob_moves_from_their_parent():
    pool = Pool()
    parent = pool.add({"activation": "swiglu", "train_batch_tokens": 65536}, 1.9)
    post = estimate(pool.evidence, static_status(ME), HW)
    info = post.info[parent.candidate]
    rng = np.random.default_rng(5)
    seen_knobs = set()
    for _ in range(300):
        p = mutate(info, rng, space=DEFAULT_SPACE)
        assert p is not None
        before = knobs.resolve(info.base, info.diff)
        after = knobs.resolve(p.base, p.diff)
        changed = [k for k in after if after[k] != before[k]]
        assert len(changed) == 1 and changed == [p.changed[0][0]]
        assert p.parents == (parent.record_id,)
        seen_knobs.add(changed[0])
    assert seen_knobs == {d.name for d in DEFAULT_SPACE}


def test_an_invalid_proposal_is_refused_with_the_knob_named():
    with pytest.raises(ProtocolError, match="unique_blocks"):
        make_proposal(BASE, {"unique_blocks": 20}, (), "mutate")


@pytest.mark.parametrize("meta", ["blend", "gain", "yield"])
def test_the_meta_level_gives_more_runs_to_the_operator_that_yields(meta):
    history = [Outcome("mutate", i % 4 != 0, 0.01 if i % 4 != 0 else 0.0) for i in range(20)]
    history += [Outcome("recombine", i == 0, 0.01 if i == 0 else 0.0) for i in range(20)]
    rng = np.random.default_rng(2)
    wins = Counter()
    for _ in range(300):
        draws = operator_draws(history, ["mutate", "recombine"], rng, BanditConfig(meta=meta))
        wins[max(draws, key=draws.get)] += 1
    assert wins["mutate"] > 0.8 * 300
    assert wins["recombine"] > 0  # the floor keeps every operator alive


def test_blending_credits_an_operators_yield_against_its_value_draw():
    # two lineages whose recombination looks best to the model, but recombining has not paid
    pool = Pool()
    root = pool.add({}, 2.00)
    pool.add({}, 2.00)
    pool.add({"activation": "swiglu"}, 1.98, parents=[root.record_id])
    pool.add({"unique_blocks": 3, "recurrence": "mirror"}, 1.98, parents=[root.record_id])
    post = estimate(pool.evidence, static_status(ME), HW)
    cold = [Outcome("recombine", False, 0.0)] * 20 + [Outcome("mutate", True, 0.03)] * 20
    runs = 200  # seeded, so deterministic; enough runs that one draw does not decide it
    picks = Counter(choose(post, np.random.default_rng(s), history=cold, operators=("mutate", "recombine")).proposal.operator for s in range(runs))
    plain = Counter(choose(post, np.random.default_rng(s), operators=("mutate", "recombine")).proposal.operator for s in range(runs))
    assert picks["recombine"] < plain["recombine"]
    assert picks["mutate"] >= 0.75 * runs


def test_the_incumbent_keeps_improvements_and_reverts_regressions():
    pool = Pool()
    root = pool.add({}, 2.00)
    pool.add({}, 2.00)
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.incumbent() == root.candidate
    worse = pool.add({"matrix_lr": 0.2}, 2.05, parents=[root.record_id])
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.incumbent() == root.candidate  # regression: reverted to the root
    choice = choose(post, np.random.default_rng(0), operators=("mutate",))
    assert choice.proposal.parents == (root.record_id,)  # mutations start from the incumbent
    assert not outcome(choice.proposal, 2.05, post)
    better = pool.add({"matrix_lr": 0.03}, 1.95, parents=[root.record_id])
    assert outcome(make_proposal(BASE, {"matrix_lr": 0.03}, [root.record_id], "mutate"), 1.95, post)
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.incumbent() == better.candidate  # improvement: kept
    assert worse.candidate != post.incumbent()


def test_a_strangers_claim_is_tried_but_never_becomes_the_incumbent_unreproduced():
    pool = Pool()
    root = pool.add({}, 2.00)
    # a plausible claim (an absurd one is discounted and not tried at all: test_claims_under_attack.py)
    fake = pool.add({"matrix_lr": 0.03}, 1.97, author=STRANGER, parents=[root.record_id])
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.incumbent() == root.candidate
    choice = choose(post, np.random.default_rng(0), operators=("try_peer",))
    assert choice.proposal.subject == fake.record_id
    # once a trusted reproduction refutes it, its author's other candidates are not tried
    pool.attest(fake.record_id, 2.01)
    other = pool.add({"matrix_lr": 0.05}, 1.96, author=STRANGER, parents=[root.record_id])
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.info[other.candidate].support < BanditConfig().min_support
    for seed in range(10):
        c = choose(post, np.random.default_rng(seed), operators=("try_peer", "recombine"))
        assert c.proposal.subject != other.record_id and other.record_id not in c.proposal.parents


def test_an_empty_pool_starts_from_the_default_base():
    post = estimate(Evidence(), static_status(ME), HW)
    choice = choose(post, np.random.default_rng(0), default_base="cpu-small")
    assert choice.proposal.base == "cpu-small" and dict(choice.proposal.diff) == {}


def test_an_empty_pool_whose_default_a_peer_trains_now_starts_one_knob_away_from_it():
    post = estimate(Evidence(), static_status(ME), HW)
    default = make_proposal("cpu-small", {}, (), "try_peer")
    for seed in range(10):
        choice = choose(post, np.random.default_rng(seed), default_base="cpu-small", running=[default.candidate])
        assert choice.proposal.base == "cpu-small" and len(choice.proposal.diff) == 1
        assert choice.proposal.candidate != default.candidate and choice.proposal.operator == "mutate"
    other = choose(post, np.random.default_rng(0), default_base="cpu-small", running=["some-other-candidate"])
    assert other.proposal.candidate == default.candidate


def test_intensification_confirms_a_one_run_incumbent_before_building_on_it():
    pool = Pool()
    root = pool.add({}, 2.00)
    post = estimate(pool.evidence, static_status(ME), HW)
    choice = choose(post, np.random.default_rng(0), config=BanditConfig(intensify=True))
    assert choice.proposal.operator == "replicate" and choice.proposal.subject == root.record_id
    pool.attest(root.record_id, 2.001)
    post = estimate(pool.evidence, static_status(ME), HW)
    # confirmed: no longer forced, so the search moves on
    ops = {choose(post, np.random.default_rng(seed), config=BanditConfig(intensify=True), operators=("mutate", "replicate")).proposal.operator for seed in range(10)}
    assert "mutate" in ops
    assert choose(post, np.random.default_rng(0), config=BanditConfig(intensify=True), operators=("mutate",)).proposal.parents == (root.record_id,)


def _leader_and_runner_up():
    pool = Pool()
    root = pool.add({}, 2.00)
    leader = pool.add({"matrix_lr": 0.03}, 1.95, parents=[root.record_id])
    pool.add({"matrix_lr": 0.03}, 1.951)
    runner_up = pool.add({"matrix_lr": 0.05}, 1.96, parents=[root.record_id])
    pool.add({"matrix_lr": 0.05}, 1.958)
    return pool, leader, runner_up


def test_top_two_sampling_re_measures_the_leader_about_beta_of_the_time():
    pool, leader, runner_up = _leader_and_runner_up()
    post = estimate(pool.evidence, static_status(ME), HW)
    config = BanditConfig(leader_share=0.5)
    picks = [choose(post, np.random.default_rng(s), config=config).proposal for s in range(120)]
    on_leader = sum(p.operator == "replicate" and p.candidate == leader.candidate for p in picks)
    on_runner_up = sum(p.operator == "replicate" and p.candidate == runner_up.candidate for p in picks)
    # beta = 0.5 of the runs re-measure the leader (by default the incumbent, here the true best);
    # the challengers' side may replicate as well, so the leader can get a little more
    assert 0.4 * 120 <= on_leader <= 0.75 * 120
    assert on_runner_up < on_leader / 3
    none = [choose(post, np.random.default_rng(s), config=BanditConfig(leader_share=0.0)).proposal for s in range(120)]
    assert sum(p.operator == "replicate" for p in none) < on_leader / 2


def test_the_leader_gets_more_runs_as_the_budget_runs_out():
    config = BanditConfig(leader_share=0.5, ramp=0.5)
    betas = [leader_probability(config, k, 84 - k) for k in range(84)]
    assert all(a <= b for a, b in zip(betas, betas[1:]))
    assert max(betas[:21]) == 0.0 and min(betas[-20:]) == 1.0  # explore first, confirm last
    assert abs(np.mean(betas) - 0.5) < 0.02  # the budget's mean share is beta
    linear = [leader_probability(BanditConfig(ramp=1.0), k, 84 - k) for k in range(84)]
    assert linear[0] == 0.0 and linear[-1] > 0.95 and abs(np.mean(linear) - 0.5) < 0.02
    assert leader_probability(config, 10) == 0.5  # budget unknown: plain top-two sampling
    assert leader_probability(BanditConfig(horizon=20), 20) == 1.0
    pool, leader, _ = _leader_and_runner_up()
    post = estimate(pool.evidence, static_status(ME), HW)

    def share(done, remaining):
        picks = [choose(post, np.random.default_rng(s), config=config, remaining=remaining, history=[Outcome("mutate", False)] * done) for s in range(60)]
        return sum(c.proposal.operator == "replicate" for c in picks) / len(picks)

    assert share(2, 82) + 0.3 < share(80, 4)


def test_the_surrogate_discounts_a_move_measured_far_from_the_incumbent():
    # mirrored recurrence tried without shared blocks did nothing; with shared blocks it may
    pool = Pool()
    for i in range(4):
        root = pool.add({"matrix_lr": 0.02 + 0.01 * i}, 2.00)
        pool.add({"matrix_lr": 0.02 + 0.01 * i, "recurrence": "mirror"}, 2.00, parents=[root.record_id])
    shared = pool.add({"activation": "swiglu", "unique_blocks": 3, "matrix_lr": 0.02}, 1.95)
    post = estimate(pool.evidence, static_status(ME), HW)
    space = [Dim("recurrence", choices=("cycle", "mirror")), Dim("activation", choices=("relu2", "leaky_relu2", "swiglu")), Dim("unique_blocks", 0, 8), Dim("matrix_lr", 0.005, 0.2, log=True)]
    x = np.array([1.0, -1.0])  # features of cycle minus mirror: the move's gain is coef . x

    def move_sd(centre, length):
        model = MoveModel.fit(post, space, centre=centre, length=length)
        cov = model.chols["recurrence"] @ model.chols["recurrence"].T
        return float(np.sqrt(x @ cov @ x))

    prior_sd = math.sqrt(2) * MoveModel.PRIOR_SD_CHOICE
    here = knobs.resolve(BASE, post.info[shared.candidate].diff)
    where_measured = knobs.resolve(BASE, {"matrix_lr": 0.03})
    global_sd, local_sd, at_source = move_sd(here, math.inf), move_sd(here, 0.5), move_sd(where_measured, 0.5)
    assert global_sd < 0.3 * prior_sd  # a global fit is sure the move is worthless
    assert local_sd > 2.5 * global_sd  # a local one is much less sure, so the move gets tried here
    assert at_source < 0.5 * local_sd  # where it was measured, it still counts


def _close_leaders():
    """Two leaders a single noisy run apart: a draw often ranks them either way."""
    pool = Pool()
    root = pool.add({}, 2.00)
    leader = pool.add({"matrix_lr": 0.03}, 1.950, parents=[root.record_id])
    runner_up = pool.add({"matrix_lr": 0.05}, 1.952, parents=[root.record_id])
    return pool, leader, runner_up


def test_confirmation_re_measures_the_incumbent_unless_told_to_follow_the_draw():
    pool, leader, runner_up = _close_leaders()
    post = estimate(pool.evidence, static_status(ME), HW)
    assert post.incumbent() == leader.candidate

    def replicated(leader_temperature):
        config = BanditConfig(leader_share=1.0, leader_temperature=leader_temperature)
        picks = [choose(post, np.random.default_rng(s), config=config).proposal for s in range(80)]
        assert all(p.operator == "replicate" for p in picks)  # beta = 1: every run confirms
        return Counter(p.candidate for p in picks)

    assert replicated(0.0) == Counter({leader.candidate: 80})  # the record one would submit
    drawn = replicated(1.0)  # Russo's top-two sampling: the leader of a posterior draw
    assert drawn[runner_up.candidate] >= 15 and drawn[leader.candidate] >= 15


def _moves_measured_elsewhere(author=FRIEND):
    """This node measured only the base; a peer on other hardware measured three matrix_lr
    moves from it, each lower rate better."""
    pool = Pool()
    mine = pool.add({}, 2.00)
    theirs = pool.add({}, 1.50, author=author, hw="cuda:other")
    parent = theirs
    for lr in (0.03, 0.02, 0.015):
        parent = pool.add({"matrix_lr": lr}, parent.val_bpb - 0.02, author=author, hw="cuda:other", parents=[parent.record_id])
    return pool, mine


def _lr_gain(pool, status, foreign_sd):
    """Mean and sd of the surrogate's gain for halving matrix_lr from the base's 0.04."""
    post = estimate(pool.evidence, status, HW)
    model = MoveModel.fit(post, [Dim("matrix_lr", 0.005, 0.2, log=True)], foreign_sd=foreign_sd)
    rng = np.random.default_rng(0)
    gains = [model.gain("matrix_lr", 0.04, 0.02, model.sample(rng)) for _ in range(4000)]
    return float(np.mean(gains)), float(np.std(gains))


def test_moves_measured_on_other_hardware_steer_the_surrogate_with_less_weight():
    pool, _ = _moves_measured_elsewhere()
    status = static_status(ME, pinned=[FRIEND])
    local, local_sd = _lr_gain(pool, status, math.inf)
    shared, shared_sd = _lr_gain(pool, status, 0.01)
    # this node never moved matrix_lr: without foreign moves the fit is the prior (no direction)
    assert abs(local) < 0.1 * local_sd
    # the peer's moves say lower is better, and the surrogate is surer of it
    assert shared > 0.01 and shared_sd < 0.85 * local_sd
    # more doubt about transfer, less pull
    assert 0 < _lr_gain(pool, status, 0.05)[0] < shared


def _moves_on_this_hardware(author):
    """`author` measured the base and three matrix_lr moves from it here, each lower rate better."""
    pool = Pool()
    parent = pool.add({}, 2.00, author=author)
    for lr in (0.03, 0.02, 0.015):
        parent = pool.add({"matrix_lr": lr}, parent.val_bpb - 0.02, author=author, parents=[parent.record_id])
    return pool


def _lr_gain_here(pool, peer_sd):
    post = estimate(pool.evidence, static_status(ME, pinned=[FRIEND]), HW)
    model = MoveModel.fit(post, [Dim("matrix_lr", 0.005, 0.2, log=True)], peer_sd=peer_sd)
    rng = np.random.default_rng(0)
    gains = [model.gain("matrix_lr", 0.04, 0.02, model.sample(rng)) for _ in range(4000)]
    return float(np.mean(gains)), float(np.std(gains))


def test_a_peers_moves_steer_the_surrogate_less_than_ones_own_with_peer_move_sd():
    peers = _moves_on_this_hardware(FRIEND)
    pooled, pooled_sd = _lr_gain_here(peers, 0.0)
    leaning, leaning_sd = _lr_gain_here(peers, 0.02)
    assert pooled > 0.01  # by default a trusted peer's moves here count as one's own
    assert 0 < leaning < pooled and leaning_sd > 1.2 * pooled_sd  # the node keeps its own doubt
    own = _moves_on_this_hardware(ME)
    assert _lr_gain_here(own, 0.02) == _lr_gain_here(own, 0.0)  # its own moves are not discounted


def test_a_strangers_moves_do_not_steer_the_surrogate():
    pool, _ = _moves_measured_elsewhere(author=STRANGER)
    stranger, stranger_sd = _lr_gain(pool, static_status(ME), 0.01)
    local, local_sd = _lr_gain(pool, static_status(ME), math.inf)
    assert (stranger, stranger_sd) == (local, local_sd)

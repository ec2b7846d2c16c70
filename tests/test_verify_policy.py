"""The verify operator's judgement: which claims a decision rests on, and when a check pays."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest

from p2pgolf.pool.verify_policy import Claim, VerifyRecord, claims_to_verify, should_verify

STATUS = {"me": "own", "friend": "pinned", "x": "unknown", "y": "unknown", "bad": "blocked"}.get


def _posterior(means: dict[str, float], records: dict[str, tuple[str, ...]]):
    cands = list(means)
    return SimpleNamespace(candidates=cands, mean=np.array([means[c] for c in cands]), index={c: i for i, c in enumerate(cands)}, info={c: SimpleNamespace(record_ids=records[c]) for c in cands}, implausible={})


def test_only_untrusted_checkable_claims_the_decision_rests_on_are_checked():
    post = _posterior({"c1": 1.0, "c2": 1.1, "c3": 1.2, "c4": 2.0, "c5": 3.0}, {"c1": ("r1",), "c2": ("r2",), "c3": ("r3",), "c4": ("r4",), "c5": ("r5", "r6")})
    claims = {
        "r1": Claim("r1", "c1", "me", 1.0, True),  # own: trusted, never checked
        "r2": Claim("r2", "c2", "x", 1.1, True),  # in the top 3
        "r3": Claim("r3", "c3", "friend", 1.2, True),  # pinned
        "r4": Claim("r4", "c4", "y", 0.5, True),  # claims a value that would enter the top
        "r5": Claim("r5", "c5", "y", 3.0, True),  # neither top nor parent
        "r6": Claim("r6", "c5", "x", 3.0, False),  # a parent, but not re-evaluable (script)
        "r7": Claim("r7", "c5", "bad", 0.1, True),  # blocked: ignored altogether
        "r8": Claim("r8", "c5", "x", 3.1, True),  # the proposal's subject
    }
    proposal = SimpleNamespace(parents=("r6", "r5"), subject="r8")
    assert claims_to_verify(post, proposal, claims, STATUS) == ["r5", "r8", "r2", "r4"]
    assert claims_to_verify(post, proposal, claims, STATUS, checked={"r5", "r2"}) == ["r8", "r4"]
    # A claim the estimator found implausible would enter the top only if believed: it is not
    # worth an evaluation. As a parent or the subject it still is.
    post.implausible = {"r4": 9.0, "r8": 7.0}
    assert claims_to_verify(post, proposal, claims, STATUS) == ["r5", "r8", "r2"]


def test_a_check_pays_while_refutations_are_likely_enough_for_its_cost():
    budget = 60.0
    first = should_verify([], budget, rng=random.Random(0))
    assert first.verify and first.cost_s == 6.0 and first.p_refute == 0.5
    # honest network, cheap checks: still worth it (P 1/12 x (60 + 8) > 4)
    honest = [VerifyRecord(f"r{i}", True, 4.0) for i in range(10)]
    assert should_verify(honest, budget, floor=0.0).verify
    # checks as expensive as the runs they save, after many confirmations: not worth it
    dear = [VerifyRecord(f"r{i}", True, 30.0) for i in range(10)]
    decision = should_verify(dear, budget, floor=0.0)
    assert not decision.verify and "<=" in decision.why
    # ... unless claims keep being refuted
    liars = [VerifyRecord(f"r{i}", False, 30.0) for i in range(10)]
    assert should_verify(liars, budget, floor=0.0).verify
    # the floor keeps a small share of checks going
    runs = [should_verify(dear, budget, floor=0.5, rng=random.Random(s)).verify for s in range(200)]
    assert 60 < sum(runs) < 140
    # failed checks count as cost, not as verdicts
    failed = [VerifyRecord("r", None, 10.0)]
    assert should_verify(failed, budget).p_refute == 0.5 and should_verify(failed, budget).cost_s == 10.0


def test_yield_is_judged_per_author_and_cost_over_all_checks():
    budget = 60.0
    history = [VerifyRecord(f"h{i}", True, 30.0, "honest") for i in range(10)] + [VerifyRecord("l0", False, 30.0, "liar")]
    assert not should_verify(history, budget, author="honest", floor=0.0).verify  # confirmed ten times
    liar = should_verify(history, budget, author="liar", floor=0.0)
    assert liar.verify and liar.p_refute == pytest.approx(2 / 3)
    stranger = should_verify(history, budget, author="new", floor=0.0)
    assert stranger.verify and stranger.p_refute == 0.5 and stranger.cost_s == 30.0  # a stranger's first claim

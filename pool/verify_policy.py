"""The verify operator's judgement: which untrusted claims to re-evaluate before the next
experiment, and whether re-evaluating still pays, from its cost and its yield so far.

    targets = claims_to_verify(posterior, proposal, claims, status, top_k=3)
        # record ids, most consequential first: the proposal's parents and subject, then every
        # untrusted claim that is in (or, believed, would enter) the top_k of this node's ranking
    decision = should_verify(history, budget_s, author=key)  # VerifyDecision(verify, p_refute, cost_s, why)

The meta level (`should_verify`): re-evaluating a claim costs an evaluation (the mean seconds of
this node's past checks, start-up and fetch included; before any, `prior_cost_share` of a
training budget), and pays when it refutes a claim this node would otherwise have spent an
experiment on. An experiment costs its budget plus two evaluations of its own (the trainer scores
the model before and after quantisation), so at least budget_s + 2 x cost_s. The yield is judged
per author (whether one key lies says little about another): with a Beta(1 + refuted, 1 +
confirmed) posterior of that author's refutation rate, a check runs while
P(refute) x (budget_s + 2 cost_s) > cost_s. So a stranger's first claim is always checked
(P = 1/2), a key that keeps being confirmed is checked less and less, and one caught lying is
checked every time; with probability `floor` a check runs anyway. Pure: no numpy, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pgolf.pool.trust_weights import TRUSTED_STATUSES as TRUSTED


@dataclass(frozen=True)
class VerifyRecord:
    """One past check of this node: whom it checked, what it found, what it cost."""

    subject: str
    agrees: bool | None  # None: the check failed (artifact unavailable, unreadable)
    seconds: float
    author: str = ""  # the claim's author


@dataclass(frozen=True)
class VerifyDecision:
    verify: bool
    p_refute: float
    cost_s: float
    why: str


@dataclass(frozen=True)
class Claim:
    """What the operator needs of one result record."""

    record_id: str
    candidate: str
    author: str
    val_bpb: float
    checkable: bool  # re-evaluable: a built-in candidate with an artifact


def claims_to_verify(posterior: Any, proposal: Any, claims: Mapping[str, Claim], status: Callable[[str], str], *, checked: Iterable[str] = (), top_k: int = 3) -> list[str]:
    """Untrusted, checkable, not yet checked claims that would change what this node does next:
    a parent or the subject of `proposal`, a record behind a candidate in the top `top_k` of
    `posterior` (by mean), or one whose claimed value, believed, would enter that top, unless
    the estimator found it implausible (it then weighs too little to change anything, and each
    fake would otherwise cost an evaluation)."""
    done = set(checked)
    ranked = sorted(posterior.candidates, key=lambda c: float(posterior.mean[posterior.index[c]]))
    top = ranked[:top_k]
    bar = float(posterior.mean[posterior.index[top[-1]]]) if len(top) == top_k else float("inf")
    wanted: list[str] = [*getattr(proposal, "parents", ()), *([proposal.subject] if getattr(proposal, "subject", None) else [])]
    for c in top:
        wanted.extend(posterior.info[c].record_ids)
    wanted.extend(rid for rid, claim in sorted(claims.items(), key=lambda kv: kv[1].val_bpb) if claim.val_bpb < bar and rid not in posterior.implausible)
    out: list[str] = []
    for rid in dict.fromkeys(wanted):
        claim = claims.get(rid)
        if claim is None or rid in done or not claim.checkable:
            continue
        if status(claim.author) in (*TRUSTED, "blocked"):
            continue
        out.append(rid)
    return out


def should_verify(history: Sequence[VerifyRecord], budget_s: float, *, author: str | None = None, prior_cost_share: float = 0.1, floor: float = 0.05, rng: random.Random | None = None) -> VerifyDecision:
    """Whether the next check, of a claim by `author` (None: judge all authors together), is worth
    its cost (see the module docstring)."""
    judged = [h for h in history if h.agrees is not None and (author is None or h.author == author)]
    refuted = sum(1 for h in judged if not h.agrees)
    p_refute = (1.0 + refuted) / (2.0 + len(judged))
    costs = [h.seconds for h in history if h.seconds > 0]
    cost_s = sum(costs) / len(costs) if costs else prior_cost_share * budget_s
    experiment_s = budget_s + 2.0 * cost_s
    benefit = p_refute * experiment_s
    if benefit > cost_s:
        return VerifyDecision(True, p_refute, cost_s, f"P(refute) {p_refute:.2f} x experiment {experiment_s:.1f} s > check {cost_s:.1f} s")
    if (rng or random.Random()).random() < floor:
        return VerifyDecision(True, p_refute, cost_s, f"floor: a check {floor:.0%} of the time although P(refute) x experiment <= check")
    return VerifyDecision(False, p_refute, cost_s, f"P(refute) {p_refute:.2f} x experiment {experiment_s:.1f} s <= check {cost_s:.1f} s")

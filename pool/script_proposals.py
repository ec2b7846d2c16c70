"""Proposal operators for script candidates: moves over a script's own hyperparameters.

A script's vocabulary (protocol.script_hparams) gives each searchable hyperparameter a range
(from its default, or stated by the user). `mutate_script` moves one of them: a number by a
Gaussian step of sd `step` in the unit range, on a log scale when the range is positive (a
bounded multiplicative move), rounded for ints; a bool flips. `recombine_scripts` unites the
diffs of two candidates of the same script. Guarantee: every proposal returned passes
`vocab.check_diff` (it is normalised against the script's defaults), so it can be run and
published; an operator that finds none returns None.
"""

from __future__ import annotations

import math

import numpy as np

from p2pgolf.pool.estimator import CandidateInfo
from p2pgolf.pool.proposals import Proposal
from p2pgolf.protocol import candidates
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.script_hparams import ScriptHparam, ScriptVocabulary


def script_proposal(base: str, diff: dict, parents: tuple[str, ...], operator: str, vocab: ScriptVocabulary, tokenizer: str, changed=()) -> Proposal:
    """A checked script proposal; ProtocolError if the diff does not fit the vocabulary."""
    normal = vocab.check_diff(diff)
    parents = tuple(sorted({p for p in parents if p}))
    return Proposal(base, normal, parents, operator, None, tuple(changed), candidates.candidate_id(base, normal, tokenizer), tokenizer)


def mutate_script(parent: CandidateInfo, vocab: ScriptVocabulary, rng: np.random.Generator, *, step: float = 0.15, name: str | None = None, tries: int = 20) -> Proposal | None:
    """Move one searchable hyperparameter of `parent` (the named one, else one at random)."""
    space = vocab.searchable()
    if not space:
        return None
    current_of = {**vocab.defaults(), **dict(parent.diff)}
    for _ in range(tries):
        hp = next((h for h in space if h.name == name), None) if name else space[int(rng.integers(len(space)))]
        if hp is None:
            return None
        current = current_of.get(hp.name, hp.default)
        value = _move(hp, current, rng, step)
        if value is None or value == current:
            continue
        diff = dict(parent.diff)
        diff[hp.name] = value
        try:
            return script_proposal(parent.base, diff, (parent.representative,), "mutate", vocab, parent.tokenizer, changed=((hp.name, value),))
        except ProtocolError:
            continue
    return None


def recombine_scripts(a: CandidateInfo, b: CandidateInfo, vocab: ScriptVocabulary, rng: np.random.Generator) -> Proposal | None:
    """The union of two diffs of one script (conflicts settled by a coin); None if not the same
    script and tokenizer, invalid, or equal to a parent."""
    if a.base != b.base or a.tokenizer != b.tokenizer:
        return None
    diff = dict(a.diff)
    for k, v in b.diff.items():
        if k not in diff or rng.random() < 0.5:
            diff[k] = v
    try:
        p = script_proposal(a.base, diff, (a.representative, b.representative), "recombine", vocab, a.tokenizer)
    except ProtocolError:
        return None
    return None if p.candidate in (a.candidate, b.candidate) else p


def _move(hp: ScriptHparam, current, rng: np.random.Generator, step: float):
    if hp.type is bool:
        return not bool(current)
    if current is None or hp.low is None or hp.high is None:
        return None
    lo, hi = float(hp.low), float(hp.high)
    log = lo > 0
    to_u = (lambda v: (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))) if log else (lambda v: (v - lo) / (hi - lo))
    u = min(1.0, max(0.0, to_u(min(max(float(current), lo), hi)))) + float(rng.normal(0.0, step))
    u = abs(u) % 2.0
    u = 2.0 - u if u > 1.0 else u
    value = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if log else lo + u * (hi - lo)
    if hp.type is int:
        return int(round(value))
    return float(f"{value:.4g}")

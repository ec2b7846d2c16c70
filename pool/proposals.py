"""Proposal operators: the four ways a node decides what to train next.

- replicate: run a leader again (less uncertainty, and an attestation of its claim);
- mutate: move one or two knobs of a candidate a short way in the search space;
- recombine: the union of two candidates' config diffs, from different lineages;
- try_peer: train a candidate someone else measured but nobody trusted has on our hardware.

Guarantee: every Proposal made here has a diff that `protocol.knobs.resolve` accepts (it is
normalised against its base), so a proposal can always be trained and published; an operator
that cannot find a valid one returns None.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pgolf.pool.estimator import CandidateInfo
from p2pgolf.pool.evidence import DEFAULT_TOKENIZER
from p2pgolf.protocol import candidates, knobs
from p2pgolf.protocol.errors import ProtocolError

OPERATORS = ("replicate", "mutate", "recombine", "try_peer")


@dataclass(frozen=True)
class Proposal:
    """What to train next: base + diff (+ tokenizer), where it came from, and why."""

    base: str
    diff: Mapping[str, Any]
    parents: tuple[str, ...]  # record ids it derives from
    operator: str
    subject: str | None = None  # for replicate / try_peer: the record being re-measured
    changed: tuple[tuple[str, Any], ...] = ()  # for mutate: (knob, new value) moved from the parent
    candidate: str = ""  # candidate id of (base, diff, tokenizer), filled in by make_proposal
    tokenizer: str = DEFAULT_TOKENIZER

    def __post_init__(self) -> None:
        if not self.candidate:
            object.__setattr__(self, "candidate", candidates.candidate_id(self.base, self.diff, self.tokenizer))

    @property
    def is_script(self) -> bool:
        """True if the proposal trains a script (base `script:<sha256>`), not the built-in trainer."""
        return candidates.is_script_base(self.base)


@dataclass(frozen=True)
class Dim:
    """One searchable knob: numeric range (log or linear) or a set of choices."""

    name: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    power_of_two: bool = False

    @property
    def categorical(self) -> bool:
        return bool(self.choices)

    def to_unit(self, value: float) -> float:
        lo, hi, v = (math.log(self.low), math.log(self.high), math.log(max(value, 1e-300))) if self.log else (self.low, self.high, value)
        return (v - lo) / (hi - lo)

    def from_unit(self, u: float) -> Any:
        u = min(1.0, max(0.0, u))
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        k = knobs.KNOBS[self.name]
        if self.power_of_two:
            return int(2 ** round(math.log2(v)))
        if k.type is int:
            return int(round(v))
        return float(f"{v:.4g}")  # short numbers read well in tables and logs


# The knobs a node searches by default, with ranges narrower than what validation allows.
DEFAULT_SPACE: tuple[Dim, ...] = (
    Dim("activation", choices=("relu2", "leaky_relu2", "swiglu")),
    Dim("recurrence", choices=("cycle", "mirror")),
    Dim("unique_blocks", 0, 8),
    Dim("num_layers", 4, 16),
    Dim("mlp_mult", 1.0, 4.0),
    Dim("train_batch_tokens", 8192, 1 << 20, log=True, power_of_two=True),
    Dim("warmdown_frac", 0.0, 0.9),
    Dim("matrix_lr", 0.005, 0.2, log=True),
    Dim("muon_momentum", 0.8, 0.99),
    Dim("tied_embed_lr", 0.005, 0.3, log=True),
    Dim("qk_gain_init", 0.5, 4.0, log=True),
)


def make_proposal(
    base: str,
    diff: Mapping[str, Any],
    parents: Sequence[str],
    operator: str,
    *,
    subject: str | None = None,
    changed: Sequence[tuple[str, Any]] = (),
    tokenizer: str = DEFAULT_TOKENIZER,
) -> Proposal:
    """A checked proposal of a built-in base; ProtocolError if base + diff is not a valid config."""
    if operator not in OPERATORS:
        raise ValueError(f"unknown operator {operator!r}; known: {', '.join(OPERATORS)}")
    normal = knobs.normalise_diff(base, diff)  # checks every entry against its knob
    config = knobs.base_config(base)
    config.update(normal)
    knobs.check_config(config)  # rules between knobs
    parents = tuple(sorted({p for p in parents if p}))
    return Proposal(base, normal, parents, operator, subject, tuple(changed), candidates.candidate_id(base, normal, tokenizer), tokenizer)


def replicate(leader: CandidateInfo) -> Proposal:
    """Train the leader again: its representative record is the subject of the attestation."""
    return _remeasure(leader, "replicate")


def try_peer(candidate: CandidateInfo) -> Proposal:
    """Train a peer's candidate on our hardware (an attestation of the peer's claim)."""
    return _remeasure(candidate, "try_peer")


def _remeasure(info: CandidateInfo, operator: str) -> Proposal:
    # the pool's candidates were validated when their records were; no need to resolve again
    rep = info.representative
    return Proposal(info.base, dict(info.diff), (rep,) if rep else (), operator, rep or None, (), info.candidate, info.tokenizer)


def mutate(
    parent: CandidateInfo,
    rng: np.random.Generator,
    *,
    space: Sequence[Dim] = DEFAULT_SPACE,
    knob: str | None = None,
    step: float = 0.15,
    direction: float = 0.0,
    tries: int = 20,
    config: Mapping[str, Any] | None = None,
) -> Proposal | None:
    """Move one knob of `parent` (the named one, else one at random): numeric knobs by a
    Gaussian step of sd `step` in the unit range (log for log-scale knobs), shifted by
    `direction` (a signed step size) when a surrogate suggests one; categorical knobs to
    another choice. None if no valid, different config turns up in `tries` attempts.
    `config` may pass the parent's resolved config when the caller has it already.
    A script parent has no knobs: None."""
    if parent.is_script:
        return None
    dims = {d.name: d for d in space}
    config = config if config is not None else knobs.resolve(parent.base, parent.diff)
    for _ in range(tries):
        dim = dims[knob] if knob is not None else dims[list(dims)[int(rng.integers(len(dims)))]]
        current = config[dim.name]
        if dim.categorical:
            options = [c for c in dim.choices if c != current]
            value = options[int(rng.integers(len(options)))]
        else:
            u = dim.to_unit(float(current)) + direction + float(rng.normal(0.0, step))
            value = dim.from_unit(_reflect(u))
            if dim.name == "unique_blocks" and value > config["num_layers"]:
                value = int(config["num_layers"])
            if value == current:
                continue
        diff = dict(parent.diff)
        diff[dim.name] = value
        try:
            return make_proposal(parent.base, diff, (parent.representative,), "mutate", changed=((dim.name, value),), tokenizer=parent.tokenizer)
        except ProtocolError:
            continue
    return None


def recombine(a: CandidateInfo, b: CandidateInfo, rng: np.random.Generator) -> Proposal | None:
    """The union of both candidates' diffs (over a's base); where they set the same knob
    differently, each conflict is settled by a coin. None if no valid union exists or the
    union equals one of the parents. Scripts have no knobs to unite: None."""
    if a.is_script or b.is_script:
        return None
    config_b = knobs.resolve(b.base, b.diff)
    base_b = knobs.base_config(b.base)
    from_b = {k: v for k, v in config_b.items() if v != base_b[k]}
    conflicts = [k for k in from_b if k in a.diff and a.diff[k] != from_b[k]]
    for _ in range(8):
        diff = dict(a.diff)
        for k, v in from_b.items():
            if k not in conflicts or rng.random() < 0.5:
                diff[k] = v
        try:
            proposal = make_proposal(a.base, diff, (a.representative, b.representative), "recombine", tokenizer=a.tokenizer)
        except ProtocolError:
            if not conflicts:
                return None
            continue
        if proposal.candidate in (a.candidate, b.candidate):
            if not conflicts:
                return None
            continue
        return proposal
    return None


def _reflect(u: float) -> float:
    """Fold a point back into [0, 1] (a step past an edge bounces back)."""
    u = abs(u) % 2.0
    return 2.0 - u if u > 1.0 else u

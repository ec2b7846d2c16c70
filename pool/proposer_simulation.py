"""External proposers in the simulator: a collective of trusted nodes searching the synthetic
landscape of pool/simulation.py, each with one extra operator of the bandit's meta level.

- "good": a stand-in for a good agent. It knows the landscape's structure: from the node's
  incumbent it proposes the move (one knob, or the architecture block: activation, recurrence
  and shared blocks together) with the largest true gain on this node's hardware, ranked with
  some error (sd `good_error` bpb), and nothing once no move gains;
- "random": a random configuration of the search space;
- "none": no proposer.

The proposer is called through `bandit.choose(external=...)` exactly as the research loop calls
node/proposers: only when the meta level picks it, and a call that gives nothing is an outcome
of gain 0 that is not an experiment. Nodes run the real estimator and bandit.

Guarantee: `run_proposers(mode, seed, ...)` is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field

import numpy as np

from p2pgolf.pool import bandit as bandit_mod
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence import DEFAULT_TOKENIZER, AttestationEvidence, Evidence, ResultEvidence
from p2pgolf.pool.proposals import Proposal
from p2pgolf.pool.simulation import BASE, BUDGET_S, Landscape, SimSettings, node_hardware
from p2pgolf.pool.trust_weights import static_status
from p2pgolf.protocol import candidates, knobs
from p2pgolf.protocol.errors import ProtocolError

PROPOSER_MODES = ("none", "good", "random")
OPERATOR = {"good": "proposer:good", "random": "proposer:random"}


@dataclass
class ProposerTrace:
    """One node's run: its incumbent's true value after each experiment, and who chose each."""

    hw: str
    incumbent_true: list[float] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)
    calls: int = 0  # requests to the proposer (kept or not)
    empty_calls: int = 0


@dataclass
class ProposerRun:
    mode: str
    seed: int
    traces: list[ProposerTrace]
    optimum: dict[str, float]

    def regret(self) -> float:
        """Mean over nodes of the final incumbent's true bpb above the hardware's optimum."""
        return float(np.mean([t.incumbent_true[-1] - self.optimum[t.hw] for t in self.traces]))

    def regret_at(self, k: int) -> float:
        """The same after `k` experiments (1 <= k <= the run's length)."""
        return float(np.mean([t.incumbent_true[min(k, len(t.incumbent_true)) - 1] - self.optimum[t.hw] for t in self.traces]))

    def share(self, after: int = 0) -> float:
        """Share of experiments (from experiment `after` on) that the proposer chose."""
        ops = [o for t in self.traces for o in t.operators[after:]]
        return sum(o.startswith(bandit_mod.EXTERNAL_PREFIX) for o in ops) / max(1, len(ops))


def run_proposers(mode: str, seed: int, settings: SimSettings = SimSettings(), good_error: float = 0.002) -> ProposerRun:
    """Simulate `settings.nodes` trusted nodes for `settings.experiments` rounds with `mode`'s proposer."""
    if mode not in PROPOSER_MODES:
        raise ValueError(f"unknown proposer mode {mode!r}; known: {', '.join(PROPOSER_MODES)}")
    land = Landscape.seeded(seed)
    hws = node_hardware(settings)
    authors = [hashlib.sha256(f"sim-node-{i}".encode()).hexdigest() for i in range(len(hws))]
    statuses = [static_status(a, pinned=[b for b in authors if b != a]) for a in authors]
    rngs = [np.random.default_rng([seed, i, 2]) for i in range(len(hws))]
    proposer_rngs = [np.random.default_rng([seed, i, 5]) for i in range(len(hws))]
    traces = [ProposerTrace(hw) for hw in hws]
    histories: list[list[bandit_mod.Outcome]] = [[] for _ in hws]
    results: list[ResultEvidence] = []
    attestations: list[AttestationEvidence] = []
    configs: dict[str, dict] = {}
    counter = itertools.count()

    def new_id() -> str:
        return hashlib.sha256(f"simp/{seed}/{next(counter)}".encode()).hexdigest()

    def config_of(base, diff, cid):
        if cid not in configs:
            configs[cid] = knobs.resolve(base, diff)
        return configs[cid]

    def incumbent_true(post, hw):
        inc = post.incumbent()
        return land.true_bpb(configs[inc] if inc else knobs.base_config(BASE), hw)

    for k in range(settings.experiments):
        new_r, new_a = [], []
        for i, hw in enumerate(hws):
            post = estimate(Evidence(tuple(results), tuple(attestations)), statuses[i], hw, budget_s=BUDGET_S, policy=settings.policy, config=settings.estimator)
            if k > 0:
                traces[i].incumbent_true.append(incumbent_true(post, hw))
            external = {}
            if mode != "none":
                asked: list[int] = []

                def call(i=i, hw=hw, post=post, asked=asked):
                    asked.append(1)
                    traces[i].calls += 1
                    offered = _propose(mode, land, hw, post, proposer_rngs[i], settings, good_error)
                    if not offered:
                        traces[i].empty_calls += 1
                        histories[i].append(bandit_mod.Outcome(OPERATOR[mode], False, 0.0, 1.0, experiment=False))
                    return offered

                external = {OPERATOR[mode]: call}
            choice = bandit_mod.choose(post, rngs[i], history=histories[i], remaining=settings.experiments - k, space=settings.space, config=settings.bandit, default_base=BASE, external=external)
            p = choice.proposal
            cfg = config_of(p.base, p.diff, p.candidate)
            measured = land.true_bpb(cfg, hw) + rngs[i].normal(0.0, land.hardware[hw].noise_sd)
            histories[i].append(bandit_mod.Outcome(p.operator, bandit_mod.outcome(p, measured, post), bandit_mod.gain(p, measured, post)))
            traces[i].operators.append(p.operator)
            if p.subject is not None:
                new_a.append(AttestationEvidence(new_id(), p.subject, authors[i], "reproduce", hw, float(measured), k))
            else:
                new_r.append(ResultEvidence(new_id(), p.candidate, p.base, dict(p.diff), authors[i], hw, float(measured), BUDGET_S, p.parents, k))
        results.extend(new_r)
        attestations.extend(new_a)
    for i, hw in enumerate(hws):
        post = estimate(Evidence(tuple(results), tuple(attestations)), statuses[i], hw, budget_s=BUDGET_S, policy=settings.policy, config=settings.estimator)
        traces[i].incumbent_true.append(incumbent_true(post, hw))
    return ProposerRun(mode, seed, traces, {h: land.optimum(h) for h in set(hws)})


def _propose(mode, land, hw, post, rng, settings, good_error) -> list[Proposal]:
    inc = post.incumbent()
    if inc is None:
        return []
    info = post.info[inc]
    current = knobs.resolve(info.base, info.diff)
    op = OPERATOR[mode]
    if mode == "random":
        diff = {}
        for dim in settings.space:
            diff[dim.name] = dim.choices[int(rng.integers(len(dim.choices)))] if dim.categorical else dim.from_unit(float(rng.random()))
        p = _proposal(info.base, diff, (info.representative,), op)
        return [p] if p is not None else []
    here = land.true_bpb(current, hw)
    best, best_score = None, 0.0
    for changes in _moves(settings):
        p = _proposal(info.base, {**dict(info.diff), **changes}, (info.representative,), op)
        if p is None or p.candidate == inc:
            continue
        gain = here - land.true_bpb(knobs.resolve(p.base, p.diff), hw)
        if gain <= 0:
            continue
        score = gain + rng.normal(0.0, good_error)
        if score > best_score:
            best, best_score = p, score
    return [best] if best is not None else []


def _moves(settings: SimSettings):
    """Single-knob moves on a grid of each knob's range, and the architecture block as one move."""
    for dim in settings.space:
        values = dim.choices if dim.categorical else [dim.from_unit(u) for u in np.linspace(0.0, 1.0, 9)]
        for v in values:
            yield {dim.name: v}
    for act in ("relu2", "leaky_relu2", "swiglu"):
        for rec in ("cycle", "mirror"):
            for ub in (0, 2, 3, 4, 5):
                yield {"activation": act, "recurrence": rec, "unique_blocks": ub}


def _proposal(base: str, diff: dict, parents: tuple[str, ...], op: str) -> Proposal | None:
    try:
        normal = knobs.normalise_diff(base, diff)
        knobs.resolve(base, normal)
    except ProtocolError:
        return None
    return Proposal(base, normal, tuple(sorted(parents)), op, None, (), candidates.candidate_id(base, normal, DEFAULT_TOKENIZER), DEFAULT_TOKENIZER)

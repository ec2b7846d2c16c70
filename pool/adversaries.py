"""Attackers in the simulator: what strangers with free keys gossip to a collective of honest,
mutually pinned nodes searching the landscape of pool/simulation.py.

Every `every` rounds the attacker fakes one candidate for one node's hardware class (the classes
in turn): a mutation of the best honest result measured on that class, citing it as parent, so
the fake looks like the next step of the leading lineage. Its keys are fresh each time (a key
that a node refuted is worth nothing to it afterwards).

- "sybil": `keys` fresh keys each claim the same plausible fake, `gain` x U(0.8, 1.5) bpb
  better than the best honest result (the issue's 50 keys claiming 1.80 against ~1.97);
- "extreme": one fresh key claims val_bpb = `extreme_bpb` (1e-6) for the fake, citing no parent
  (a root candidate is held only by the pool's level, not by a parent's measurements);
- "liar": one fresh key claims a plausible fake and attests it itself (a reproduction at the
  claimed value), and `helpers` more fresh keys re-evaluate it in agreement;
- "none": no attack (the baseline, measured in the same run).

`run_attack` reports, per node, which experiments were spent on fakes (re-measuring one,
building on one, or running a fake's candidate while no trusted evidence backed it): the share
of honest experiments the attack captured. Nodes run the real estimator and bandit.

Guarantee: `run_attack(kind, seed, ...)` is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from p2pgolf.pool.evidence import AttestationEvidence, ResultEvidence
from p2pgolf.pool.simulation import BUDGET_S, RunResult, SimSettings, _collective, _Ledger, node_hardware

ATTACKS = ("none", "sybil", "extreme", "liar")


@dataclass(frozen=True)
class AttackSettings:
    """How hard the attacker pushes."""

    every: int = 4  # a new fake every this many rounds
    keys: int = 50  # sybil: fresh keys behind each fake
    gain: float = 0.03  # plausible fakes claim this much (x U(0.8, 1.5)) below the best honest result
    extreme_bpb: float = 1e-6  # extreme: the claimed value
    helpers: int = 10  # liar: fresh keys that re-evaluate its fake in agreement


class Attacker:
    """Called after each round with the ledger; returns the records it gossips then."""

    def __init__(self, kind: str, seed: int, hws: list[str], settings: SimSettings, attack: AttackSettings):
        if kind not in ATTACKS:
            raise ValueError(f"unknown attack {kind!r}; known: {', '.join(ATTACKS)}")
        if attack.every < 1 or attack.keys < 1 or attack.helpers < 0:
            raise ValueError(f"attack settings need every >= 1, keys >= 1 and helpers >= 0, not {attack}")
        self.kind, self.seed, self.settings, self.attack = kind, seed, settings, attack
        self.classes = sorted(set(hws), key=hws.index)
        self.rng = np.random.default_rng([seed, 1313])
        self.keys: set[str] = set()
        self.n_keys = 0

    def fresh_key(self) -> str:
        self.n_keys += 1
        key = hashlib.sha256(f"sim-attacker/{self.seed}/{self.n_keys}".encode()).hexdigest()
        self.keys.add(key)
        return key

    def __call__(self, ledger: _Ledger, k: int) -> tuple[list[ResultEvidence], list[AttestationEvidence]]:
        if self.kind == "none" or k % self.attack.every:
            return [], []
        hw = self.classes[(k // self.attack.every) % len(self.classes)]
        honest = [r for r in ledger.results if r.author not in self.keys and r.hw == hw]
        if not honest:
            return [], []
        best = min(honest, key=lambda r: r.val_bpb)
        proposal = self._mutation(best)
        if proposal is None:
            return [], []
        ledger.config(proposal.base, proposal.diff, proposal.candidate)
        plausible = best.val_bpb - self.attack.gain * float(self.rng.uniform(0.8, 1.5))

        # an absurd value is most believable without a parent to be compared with
        parents = () if self.kind == "extreme" else (best.record_id,)

        def claim(author: str, value: float) -> ResultEvidence:
            return ResultEvidence(ledger.new_id(), proposal.candidate, proposal.base, dict(proposal.diff), author, hw, float(value), BUDGET_S, parents, k)

        if self.kind == "sybil":
            return [claim(self.fresh_key(), plausible + float(self.rng.normal(0.0, 0.001))) for _ in range(self.attack.keys)], []
        if self.kind == "extreme":
            return [claim(self.fresh_key(), self.attack.extreme_bpb)], []
        liar = self.fresh_key()
        fake = claim(liar, plausible)
        atts = [AttestationEvidence(ledger.new_id(), fake.record_id, liar, "reproduce", hw, float(plausible + self.rng.normal(0.0, 0.001)), k)]
        atts += [AttestationEvidence(ledger.new_id(), fake.record_id, self.fresh_key(), "reeval", hw, float(plausible + self.rng.normal(0.0, 0.0005)), k) for _ in range(self.attack.helpers)]
        return [fake], atts

    def _mutation(self, best: ResultEvidence):
        from p2pgolf.pool.estimator import CandidateInfo
        from p2pgolf.pool.proposals import mutate

        info = CandidateInfo(best.candidate, best.base, best.diff, (best.record_id,), best.record_id, (), (), (), 0.0, 1)
        return mutate(info, self.rng, space=self.settings.space, step=0.3)


@dataclass
class AttackRun:
    """One seed's run under one attack."""

    kind: str
    seed: int
    run: RunResult

    def captured_share(self) -> float:
        """Experiments spent on fakes / all experiments, pooled over the nodes."""
        spent = [flag for t in self.run.traces for flag in t.on_fake]
        return float(np.mean(spent)) if spent else 0.0

    def regret(self) -> float:
        """Mean over nodes of the final incumbent's true bpb above its hardware's optimum."""
        return float(np.mean([t.final_true - self.run.optimum[t.hw] for t in self.run.traces]))


def run_attack(kind: str, seed: int, settings: SimSettings = SimSettings(), attack: AttackSettings = AttackSettings()) -> AttackRun:
    """The honest collective ("trust" mode: nodes pin each other) under one attack."""
    from p2pgolf.pool.landscapes import make_landscape

    land = make_landscape(settings.landscape, seed)
    hws = node_hardware(settings)
    attacker = Attacker(kind, seed, hws, settings, attack)
    traces = _collective("trust", land, hws, seed, settings, attack=attacker)
    return AttackRun(kind, seed, RunResult(f"trust+{kind}", seed, traces, {h: land.optimum(h) for h in set(hws)}))

"""Pools of real signed records from the simulator's landscape, for the report's tests, its
benchmark and a demo (`benchmarks/report_bench.py`).

`simulate_pool` runs nodes that choose with the real estimator and bandit (pool/estimator.py,
pool/bandit.py) on `pool.simulation.Landscape`, as the simulator's collective mode does, and
stores what each measured as records signed with real keys: results citing their parents,
`reproduce` attestations for replicates and tries of a peer, `reeval` attestations by a
verifier. `random_walk_pool` is the cheap variant for large pools (hill climbing by the real
`mutate`/`recombine` operators, no estimator), so 100,000 records take seconds, not hours.
Both are deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.records import Attestation, HardwareClass, Metrics, Result
from p2pgolf.protocol.signing import SignedRecord, sign_record

BENCH = "parameter-golf/sp1024-10min"
T0_MS = 1_780_000_000_000  # a fixed clock: the same seed gives the same records
ROUND_MS = 11 * 60_000  # one experiment (10 min budget) plus evaluation


def identities(n: int, seed: int = 0) -> list[Identity]:
    """n fixed identities for a seed."""
    return [Identity.from_seed(bytes([(seed * 31 + i + 1) % 256]) * 31 + bytes([i % 256])) for i in range(n)]


def simulate_pool(store, nodes: Sequence[Identity], experiments: int, *, seed: int = 0, verifier: Identity | None = None) -> list[SignedRecord]:
    """`experiments` rounds of every node choosing with the real bandit over the shared pool
    (each pins the others), its measurement on the landscape stored in `store`."""
    from p2pgolf.pool import bandit
    from p2pgolf.pool.estimator import estimate
    from p2pgolf.pool.evidence import from_store
    from p2pgolf.pool.simulation import HARDWARE, Landscape
    from p2pgolf.pool.trust_weights import static_status

    bench = benchmark(BENCH)
    land = Landscape.seeded(seed)
    hws = [HARDWARE[i % len(HARDWARE)].key for i in range(len(nodes))]
    keys = [n.public_hex for n in nodes]
    statuses = [static_status(k, pinned=[o for o in keys if o != k]) for k in keys]
    rngs = [np.random.default_rng([seed, i]) for i in range(len(nodes))]
    histories: list[list] = [[] for _ in nodes]
    made: list[SignedRecord] = []
    for k in range(experiments):
        evidence = from_store(store, bench.id)
        new: list[SignedRecord] = []
        for i, who in enumerate(nodes):
            post = estimate(evidence, statuses[i], hws[i], budget_s=bench.budget_s)
            p = bandit.choose(post, rngs[i], history=histories[i], remaining=experiments - k, default_base="naive-baseline").proposal
            measured = _measure(land, p.base, p.diff, hws[i], rngs[i])
            histories[i].append(bandit.Outcome(p.operator, bandit.outcome(p, measured, post), bandit.gain(p, measured, post)))
            when = T0_MS + k * ROUND_MS + i * 1000
            if p.subject is not None:
                new.append(_attestation(who, bench, p.subject, hws[i], measured, when, "reproduce", f"{p.operator} by the research loop", seed=k))
            else:
                new.append(_result(who, bench, p.base, p.diff, p.parents, hws[i], measured, when, seed=k))
        if verifier is not None and k % 3 == 2 and made:
            subject = min((r for r in made if r.record.kind == "result"), key=lambda r: r.record.metrics.val_bpb)
            value = subject.record.metrics.val_bpb + float(np.random.default_rng([seed, k, 9]).normal(0, 0.001))
            new.append(_attestation(verifier, bench, subject.id, subject.record.hw.key, value, T0_MS + k * ROUND_MS + 500, "reeval", "verify", seed=0))
        for rec in new:
            store.add_signed(rec)
        made.extend(new)
    return made


def random_walk_pool(path: str | Path, records: int, *, nodes: int = 12, seed: int = 0, batch: int = 5000) -> int:
    """A pool file of `records` records: `nodes` hill climbers per round on the landscape
    (mutations of their best, recombinations with a peer's best, replicates); returns the count."""
    from p2pgolf.pool.proposals import mutate, recombine
    from p2pgolf.pool.simulation import HARDWARE, SIM_SPACE, Landscape
    from p2pgolf.pool.store import PoolStore

    bench = benchmark(BENCH)
    land = Landscape.seeded(seed)
    who = identities(nodes, seed)
    hws = [HARDWARE[i % len(HARDWARE)].key for i in range(nodes)]
    rng = np.random.default_rng(seed)
    best: list[tuple[float, SignedRecord | None]] = [(np.inf, None)] * nodes
    made = 0
    pending: list[bytes] = []
    with PoolStore(path) as store:
        k = 0
        while made < records:
            for i in range(nodes):
                if made >= records:
                    break
                when = T0_MS + k * ROUND_MS + i * 1000
                value, rec = best[i]
                roll = rng.random()
                if rec is None:
                    signed = _result(who[i], bench, "naive-baseline", {}, (), hws[i], _measure(land, "naive-baseline", {}, hws[i], rng), when, seed=k)
                elif roll < 0.1:
                    signed = _attestation(who[i], bench, rec.id, hws[i], _measure(land, rec.record.base, rec.record.diff, hws[i], rng), when, "reproduce", "replicate by the research loop", seed=k)
                else:
                    info = _info(rec)
                    p = None
                    if roll < 0.25:
                        other = best[int(rng.integers(nodes))][1]
                        p = recombine(info, _info(other), rng) if other is not None and other.id != rec.id else None
                    p = p or mutate(info, rng, space=SIM_SPACE)
                    if p is None:
                        continue
                    signed = _result(who[i], bench, p.base, p.diff, p.parents, hws[i], _measure(land, p.base, p.diff, hws[i], rng), when, seed=k)
                if signed.record.kind == "result" and signed.record.metrics.val_bpb < value:
                    best[i] = (signed.record.metrics.val_bpb, signed)
                pending.append(signed.raw)
                made += 1
                if len(pending) >= batch:
                    store.add_many(pending, now_ms=when)
                    pending = []
            k += 1
        if pending:
            store.add_many(pending, now_ms=T0_MS + k * ROUND_MS)
    return made


def hardware_class(key: str) -> HardwareClass:
    """The HardwareClass of a simulator hardware key ("accel:model:xN")."""
    accel, rest = key.split(":", 1)
    model, count = rest.rsplit(":x", 1)
    return HardwareClass(accel, model, int(count), 81559 if accel == "cuda" else 0)


def _info(rec: SignedRecord):
    from p2pgolf.pool.estimator import CandidateInfo

    r = rec.record
    return CandidateInfo(r.candidate, r.base, dict(r.diff), (rec.id,), rec.id, (), (r.author,), (r.hw.key,), 1.0, 1)


def _measure(land, base: str, diff, hw: str, rng: np.random.Generator) -> float:
    from p2pgolf.protocol import knobs

    return float(land.true_bpb(knobs.resolve(base, diff), hw) + rng.normal(0.0, land.hardware[hw].noise_sd))


def _metrics(val_bpb: float) -> Metrics:
    return Metrics(val_bpb=val_bpb, val_loss=val_bpb * 0.69, steps=1000, train_tokens=500_000_000, artifact_bytes=15_000_000, eval_tokens=62_000_000)


def _result(who: Identity, bench, base: str, diff, parents, hw: str, val_bpb: float, when: int, *, seed: int, note: str = "") -> SignedRecord:
    result = Result(bench=bench.id, author=who.public_hex, created_ms=when, base=base, diff=dict(diff), tokenizer=bench.tokenizer,
                    hw=hardware_class(hw), budget_s=bench.budget_s, seed=seed, metrics=_metrics(val_bpb), parents=tuple(parents),
                    trainer="sim/0", note=note)  # fmt: skip
    return sign_record(result, who.signing_key)


def _attestation(who: Identity, bench, subject: str, hw: str, val_bpb: float, when: int, method: str, note: str, *, seed: int) -> SignedRecord:
    att = Attestation(bench=bench.id, author=who.public_hex, created_ms=when, subject=subject, method=method, tokenizer=bench.tokenizer,
                      hw=hardware_class(hw), seed=seed, metrics=_metrics(val_bpb), trainer="sim/0", note=note)  # fmt: skip
    return sign_record(att, who.signing_key)

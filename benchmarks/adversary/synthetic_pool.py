"""A synthetic but realistic season of records in a real SQLite pool file, for scale benchmarks.

`build_pool(path, n_records, n_candidates)` writes signed records the way a busy network would
leave them: candidates grown as lineages (mostly mutations of one of the current leaders, some
recombinations of two, now and then of any recent candidate, a few fresh roots), measured on several hardware classes (each with its
own offset and noise), by many keys (one own, a few pinned, the rest unknown and free), with
replicates of good candidates and attestations (re-evaluations and reproductions) of claims.
Deterministic for a seed. Records are stored with `PoolStore.add_verified` (they were just
signed here), so building costs signing, not verification.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

CLASSES = (
    ("cuda", "RTX 4090", 1, 24564, 0.00),
    ("cuda", "H100 80GB HBM3", 8, 81559, -0.25),
    ("cuda", "A100-SXM4-40GB", 1, 40960, -0.05),
    ("mps", "Apple M3 Max", 1, 65536, 0.30),
    ("cpu", "Apple M2", 1, 16384, 0.55),
    ("cuda", "RTX 3090", 1, 24576, 0.04),
)
TARGET_CLASS = 0  # the node under test trains on the first class


FLOOR = 1.0  # no candidate gets below this val_bpb: gains shrink as the search closes in on it


def _step(value: float, relative: float) -> float:
    """A child's value: the parent's distance to the floor, changed by `relative` (positive: better)."""
    return FLOOR + (value - FLOOR) * (1.0 - relative)


@dataclass(frozen=True)
class SyntheticPool:
    """What `build_pool` made: where, how much, and who the node is."""

    path: Path
    bench: str
    budget_s: float
    own_key: str
    own_seed: bytes
    pinned: tuple[str, ...]
    target_hw: str
    n_records: int
    n_candidates: int
    n_keys: int


def build_pool(path: Path, n_records: int = 100_000, n_candidates: int = 20_000, *, n_keys: int = 2_000, seed: int = 1, attestation_share: float = 0.15) -> SyntheticPool:
    """Write `n_records` signed records over about `n_candidates` candidates into a new pool at `path`."""
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol import knobs
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.protocol.identity import Identity
    from p2pgolf.protocol.records import Attestation, HardwareClass, Metrics, Result
    from p2pgolf.protocol.signing import sign_record

    rng = random.Random(seed)
    bench = benchmark("parameter-golf/sp1024-10min")
    keys = [Identity.from_seed(rng.randbytes(32)) for _ in range(n_keys)]
    own, pinned = keys[0], keys[1:6]
    classes = [HardwareClass(a, m, c, mem) for a, m, c, mem, _ in CLASSES]
    offsets = [off for *_, off in CLASSES]
    tunable = [k for k in knobs.KNOBS.values() if k.type is float and k.low is not None and k.high is not None and k.high > k.low]
    t0 = int(time.time() * 1000) - 30 * 86_400_000
    n_attest = int(n_records * attestation_share)
    n_results = n_records - n_attest
    # candidates: (diff, true value, parent candidate indices)
    cands: list[tuple[dict, float, tuple[int, ...]]] = []
    first_record: list[str] = []  # a record id of each candidate (what a child cites)
    results: list = []
    out: list = []

    def new_diff() -> dict:
        diff = {}
        for knob in rng.sample(tunable, rng.randrange(1, 4)):
            hi = min(knob.high, knob.low * 50 + 1)
            diff[knob.name] = float(f"{rng.uniform(knob.low, hi):.6g}")
        return diff

    leaders: list[int] = []

    def pick_parent() -> int:
        # as bandits do: mutations and recombinations start from the current leaders (the best 32
        # of the recent candidates, refreshed every 200), now and then from any recent candidate
        if not leaders or len(cands) % 200 == 0:
            recent = range(max(0, len(cands) - 4000), len(cands))
            leaders[:] = sorted(recent, key=lambda i: cands[i][1])[:32]
        if rng.random() < 0.1:
            return rng.randrange(max(0, len(cands) - 4000), len(cands))
        return rng.choice(leaders)

    made = 0
    while made < n_results:
        if len(cands) < n_candidates and (not cands or rng.random() < n_candidates / n_results * 1.05):
            u = rng.random()
            if not first_record or u < 0.08:
                diff, value, parents = new_diff(), rng.uniform(1.9, 2.3), ()
            elif u < 0.8:
                p = pick_parent()
                diff = dict(cands[p][0])
                diff.update(new_diff())
                value, parents = _step(cands[p][1], rng.gauss(0.01, 0.02)), (p,)
            else:
                a, b = pick_parent(), pick_parent()
                if a == b:
                    continue
                diff = {**cands[a][0], **cands[b][0]}
                value, parents = _step(0.5 * (cands[a][1] + cands[b][1]), rng.gauss(0.0, 0.015)), tuple(sorted((a, b)))
            c = len(cands)
            cands.append((diff, value, parents))
        else:
            c = min(rng.sample(range(len(cands)), min(2, len(cands))), key=lambda i: cands[i][1])  # a replicate, of the better of two
        diff, value, parents = cands[c]
        h = 0 if rng.random() < 0.35 else rng.randrange(len(classes))
        u = rng.random()
        who = own if (h == 0 and u < 0.04) else pinned[rng.randrange(len(pinned))] if u < 0.2 else keys[6 + rng.randrange(n_keys - 6)]
        bpb = value + offsets[h] + rng.gauss(0.0, 0.006 if h != 4 else 0.02)
        metrics = Metrics(val_bpb=bpb, val_loss=bpb * 0.6931, steps=rng.randrange(500, 20_000), train_tokens=rng.randrange(10**8, 10**9),
                          artifact_bytes=rng.randrange(10**6, 16_000_000), eval_tokens=6 * 10**7)
        cited = tuple(sorted({first_record[p] for p in parents if p < len(first_record)}))
        record = Result(bench=bench.id, author=who.public_hex, created_ms=t0 + made * 20 + rng.randrange(20), base="naive-baseline", diff=diff,
                        tokenizer="sp1024", hw=classes[h], budget_s=bench.budget_s, seed=rng.randrange(2**32), metrics=metrics, parents=cited,
                        trainer="torch-2.6/cuda", artifact=rng.randbytes(32).hex())
        try:
            signed = sign_record(record, who.signing_key)
        except Exception:  # a random diff broke a cross-knob rule: draw again
            if c == len(cands) - 1 and c >= len(first_record):
                cands.pop()
            continue
        if c == len(first_record):
            first_record.append(signed.id)
        results.append((signed, h, value))
        out.append(signed)
        made += 1
    for i in range(n_attest):
        subject, h_subject, value = results[rng.randrange(len(results))]
        who = keys[6 + rng.randrange(n_keys - 6)] if rng.random() < 0.7 else pinned[rng.randrange(len(pinned))]
        method = "reeval" if rng.random() < 0.6 else "reproduce"
        h = h_subject if method == "reeval" else rng.randrange(len(classes))
        bpb = (subject.record.metrics.val_bpb + rng.gauss(0.0, 0.001)) if method == "reeval" else value + offsets[h] + rng.gauss(0.0, 0.006)
        metrics = Metrics(val_bpb=bpb, val_loss=bpb * 0.6931, steps=1000, train_tokens=10**8, artifact_bytes=10**6, eval_tokens=6 * 10**7)
        record = Attestation(bench=bench.id, author=who.public_hex, created_ms=subject.record.created_ms + 1 + rng.randrange(10_000), subject=subject.id,
                             method=method, tokenizer="sp1024", hw=classes[h], seed=rng.randrange(2**32), metrics=metrics, trainer="torch-2.6/cuda")
        out.append(sign_record(record, who.signing_key))
    path.parent.mkdir(parents=True, exist_ok=True)
    with PoolStore(path) as store:
        for i in range(0, len(out), 5000):
            store.add_verified(out[i : i + 5000])
        trust = TrustStore(store)
        trust.set_own(own.public_hex)
        for k in pinned:
            trust.pin(k.public_hex)
    return SyntheticPool(path, bench.id, bench.budget_s, own.public_hex, bytes(own.signing_key), tuple(k.public_hex for k in pinned),
                         classes[TARGET_CLASS].key, len(out), len(cands), n_keys)

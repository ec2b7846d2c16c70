"""One decision at scale: the estimate equals the dense reference it replaced on a random small
pool, a large pool is estimated without any n x n matrix, the pool's evidence is read
incrementally and identically, and the research loop decides off the trio thread."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import trio

import recordgen as g
from p2pgolf.pool import estimator, gmrf
from p2pgolf.pool.evidence import AttestationEvidence, Evidence, from_store, result_evidence
from p2pgolf.pool.evidence_cache import EvidenceCache
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust_weights import static_status

ME = "aa" * 32
PINNED = "bb" * 32
HW = "cpu:Xeon:x1"
CLASSES = (HW, "cuda:H100:x8", "mps:M3:x1", "cuda:4090:x1")


def _pool(n_candidates: int, per_candidate: float, seed: int) -> Evidence:
    """A random pool: lineages (roots, mutations, recombinations) measured on four classes by
    own, pinned and many unknown keys, with replicates and attestations."""
    rng = np.random.default_rng(seed)
    offsets = {h: o for h, o in zip(CLASSES, (0.0, -0.3, 0.4, 0.05))}
    values, results, attestations = [], [], []
    for c in range(n_candidates):
        if c < 3 or rng.random() < 0.1:
            parents, value = (), rng.uniform(1.9, 2.3)
        else:
            ps = sorted({int(rng.integers(max(0, c - 50), c)) for _ in range(1 if rng.random() < 0.75 else 2)})
            parents, value = tuple(results[values[p][1]].record_id for p in ps), float(np.mean([values[p][0] for p in ps]) + rng.normal(0, 0.02))
        first = len(results)
        for r in range(max(1, int(rng.poisson(per_candidate)))):
            h = CLASSES[int(rng.integers(len(CLASSES)))] if r else CLASSES[c % len(CLASSES)]
            author = rng.choice([ME, PINNED] + [f"{k:064x}" for k in range(1, 40)])
            results.append(result_evidence(f"{c:032x}{r:032x}", base="smoke-tiny", diff={"matrix_lr": round(0.001 + c * 1e-5, 8)}, author=str(author), hw=h,
                                           val_bpb=value + offsets[h] + rng.normal(0, 0.005), budget_s=60.0, parents=parents if r == 0 else (), created_ms=c * 100 + r,
                                           seed=int(rng.integers(1 << 30)), train_tokens=10**6))
        values.append((value, first))
    for i in range(len(results) // 10):
        subject = results[int(rng.integers(len(results)))]
        attestations.append(AttestationEvidence(f"{i:064x}"[::-1], subject.record_id, f"{int(rng.integers(1, 40)):064x}", "reeval", subject.hw, subject.val_bpb + rng.normal(0, 0.002), subject.created_ms + 1))
    return Evidence(tuple(results), tuple(attestations))


def _dense_reference(rows, cols, vals, b, k, **_):
    """The estimator's solve before pool/gmrf.py: the n x n precision, inverted whole."""
    n = len(b)
    a = np.zeros((n, n))
    np.add.at(a, (rows, cols), vals)
    cov = np.linalg.inv(a)
    cov = (cov + cov.T) / 2.0
    return gmrf.GaussianSolution(cov @ b, np.diag(cov).copy(), k, True, cov[k:, k:])


STATUS = static_status(ME, pinned=[PINNED])


def test_the_estimate_matches_the_dense_reference_on_a_random_small_pool(monkeypatch):
    evidence = _pool(150, 2.5, seed=3)
    got = estimator.estimate(evidence, STATUS, HW, budget_s=60.0)
    monkeypatch.setattr(gmrf, "solve", _dense_reference)
    want = estimator.estimate(evidence, STATUS, HW, budget_s=60.0)
    assert got.candidates == want.candidates and len(got.candidates) == 150
    np.testing.assert_allclose(got.mean, want.mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.sd, want.sd, rtol=1e-7)
    for h, t in want.translations.items():
        assert abs(got.translations[h].offset - t.offset) < 1e-9 and abs(got.translations[h].offset_sd - t.offset_sd) < 1e-9
    assert got.ranked()[0].candidate == want.ranked()[0].candidate


def test_a_large_pool_is_estimated_without_an_n_by_n_matrix():
    evidence = _pool(1_200, 1.0, seed=4)
    tracemalloc.start()
    try:
        post = estimator.estimate(evidence, STATUS, HW, budget_s=60.0)
        draw = post.sample(np.random.default_rng(1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n = len(post.candidates)
    assert n == 1_200 and draw.shape == (1, n) and np.all(np.isfinite(post.sd)) and np.all(post.sd > 0)
    assert peak < n * n * 8  # less than one dense n x n matrix (11.5 MB here); the dense solve took several


def test_the_evidence_is_read_incrementally_and_equals_a_full_read(tmp_path):
    me = g.identity(3)
    with PoolStore(tmp_path / "pool.sqlite") as store:
        records = g.batch(8, who=me)
        store.add_many([r.raw for r in records[4:]])
        cache = EvidenceCache(store, g.SMOKE)
        assert cache.evidence() == from_store(store, g.SMOKE)
        # older records arrive later (sync), with attestations and a record of another bench
        store.add_many([r.raw for r in records[:4]] + [g.attestation(g.identity(4), records[5]).raw, g.result(me, i=9, bench=g.GOLF).raw])
        assert cache.evidence() == from_store(store, g.SMOKE)
        assert len(cache.evidence().results) == 8 and len(cache.evidence().attestations) == 1


def test_the_research_loop_decides_off_the_trio_thread(tmp_path, monkeypatch):
    from test_failed_candidates import _loop

    me = g.identity(11)
    real = estimator.estimate

    def slow_estimate(*args, **kw):
        time.sleep(0.4)  # a large pool: the estimate takes a while
        return real(*args, **kw)

    monkeypatch.setattr(estimator, "estimate", slow_estimate)
    ticks: list[float] = []
    with PoolStore(tmp_path / "pool.sqlite") as store:
        from p2pgolf.pool.trust import TrustStore

        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        store.add_signed(g.result(me, i=0, diff={}, val_bpb=2.5))
        loop = _loop(tmp_path, store, trust, me)

        async def main() -> None:
            async def ticker() -> None:
                while True:
                    await trio.sleep(0.02)
                    ticks.append(time.monotonic())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                await loop.step()
                nursery.cancel_scope.cancel()

        trio.run(main)
    assert len(ticks) >= 5  # the loop kept serving while the estimate ran

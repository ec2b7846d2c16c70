"""PoolStore.count without an author reads the hour buckets: it equals a scan of the records
through single adds, batches, duplicates, other benchmarks and the digests' recount."""

from __future__ import annotations

import recordgen as g
from p2pgolf.pool.store import PoolStore


def _scan(store: PoolStore, bench: str | None = None) -> int:
    return store._one("SELECT count(*) FROM records" + (" WHERE bench = ?" if bench else ""), (bench,) if bench else ())[0]


def test_the_bucket_count_equals_a_scan_of_the_records(tmp_path):
    with PoolStore(tmp_path / "pool.sqlite") as store:
        assert store.count() == 0 and store.count(bench=g.SMOKE) == 0
        smoke, golf = g.batch(30, who=g.identity(1)), g.batch(7, who=g.identity(2), bench=g.GOLF)
        store.add(smoke[0].raw)
        store.add_many([r.raw for r in smoke[:20]])  # one already held
        store.add_verified(smoke[10:] + golf + golf[:2])  # overlaps, and the same record twice in a batch
        store.add_signed(g.attestation(g.identity(3), smoke[1]))
        store.summary(g.SMOKE)  # recounts the changed hours
        store.add_many([r.raw for r in smoke])  # all duplicates
        for bench in (None, g.SMOKE, g.GOLF):
            assert store.count(bench=bench) == _scan(store, bench)
        assert (store.count(), store.count(bench=g.SMOKE), store.count(bench=g.GOLF)) == (38, 31, 7)

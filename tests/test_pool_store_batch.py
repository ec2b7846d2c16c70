"""Batched inserts (`PoolStore.add_verified`): one statement per table, same outcome as one by one."""

from __future__ import annotations

import sqlite3

import recordgen as g
from p2pgolf.pool.store import BUCKET_MS, PoolStore, bucket_digest
from p2pgolf.protocol.signing import decode_record


def test_a_batch_reports_stored_and_repeated_records_and_stores_each_once(tmp_path):
    records = [decode_record(r.raw) for r in g.batch(30)]
    with PoolStore(tmp_path / "pool.sqlite") as store:
        first = store.add_verified(records[:10])
        # Ten already stored, twenty new, and three of the new ones twice in the same batch.
        again = store.add_verified(records + records[12:15])
        assert first.added == [r.id for r in records[:10]] and first.duplicates == []
        assert again.added == [r.id for r in records[10:]]
        assert again.duplicates == [r.id for r in records[:10]] + [r.id for r in records[12:15]]
        assert store.count() == 30
        assert all(store.get_raw(r.id) == r.raw for r in records)


def test_a_batch_stores_parent_links_and_exact_hour_counts(tmp_path):
    records = [decode_record(r.raw) for r in g.batch(150)]  # one a minute over three hours; most cite a parent
    with PoolStore(tmp_path / "batched.sqlite") as batched, PoolStore(tmp_path / "single.sqlite") as single:
        batched.add_verified(records[:70])
        batched.add_verified(records[70:])
        for rec in records:
            single.add_verified([rec])
        assert batched.summary(g.SMOKE) == single.summary(g.SMOKE)
        links = "SELECT child, parent FROM parents ORDER BY child, parent"
        stored = sqlite3.connect(batched.path).execute(links).fetchall()
        assert stored == sqlite3.connect(single.path).execute(links).fetchall()
        assert len(stored) == sum(len(r.record.parents) for r in records) > 0
        # The counts kept per hour (before any digest is computed) equal the records in that hour.
        rows = sqlite3.connect(batched.path).execute("SELECT start_ms, count FROM buckets WHERE bench = ?", (g.SMOKE,)).fetchall()
        for start, count in rows:
            ids = batched.ids_between(g.SMOKE, start, start + BUCKET_MS)
            assert count == len(ids) > 0
        assert sum(b.count for b in batched.summary(g.SMOKE)) == 150
        assert all(b.digest == bucket_digest(batched.ids_between(g.SMOKE, b.start_ms, b.start_ms + BUCKET_MS)) for b in batched.summary(g.SMOKE))

"""PoolStore on real SQLite files with real signed records."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

import recordgen as g
from p2pgolf.pool import schema
from p2pgolf.pool.schema import SchemaVersionError
from p2pgolf.pool.store import BUCKET_MS, PoolStore, bucket_digest
from p2pgolf.protocol import canonical
from p2pgolf.protocol.errors import ProtocolError


@pytest.fixture
def store(tmp_path):
    with PoolStore(tmp_path / "deep" / "dir" / "pool.sqlite") as s:
        yield s


def test_added_record_reads_back_byte_for_byte_with_its_fields(store):
    rec = g.result(g.identity(1), i=4, note="wider mlp")
    outcome = store.add(rec.raw)
    assert outcome.id == rec.id and outcome.added
    assert store.has(rec.id)
    assert store.get_raw(rec.id) == rec.raw
    back = store.get(rec.id)
    assert back.record == rec.record and back.signature == rec.signature and back.body == rec.body
    assert store.get("00" * 32) is None and store.get_raw("00" * 32) is None and not store.has("00" * 32)


def test_adding_a_record_twice_reports_a_duplicate_and_keeps_one_row(store):
    rec = g.result(g.identity(1))
    assert store.add(rec.raw).added
    assert store.add(rec.raw).added is False
    assert store.add_signed(rec) is False
    assert store.count() == 1
    assert len(store.summary(g.SMOKE)) == 1 and store.summary(g.SMOKE)[0].count == 1


def test_invalid_envelopes_raise_and_write_nothing(store):
    rec = g.result(g.identity(1))
    env = canonical.decode(rec.raw, max_len=1 << 16)
    forged = canonical.encode({"body": env["body"], "sig": bytes(64)})
    with pytest.raises(ProtocolError, match="signature"):
        store.add(forged)
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        store.add(b"\xc1not msgpack")
    # Stamped an hour after the clock we pass in: beyond the allowed skew.
    with pytest.raises(ProtocolError, match="created_ms"):
        store.add(rec.raw, now_ms=rec.created_ms - 3_600_000)
    assert store.count() == 0 and store.summary(g.SMOKE) == []


def test_add_many_stores_the_good_reports_duplicates_and_rejects_by_index(store):
    a, b, c = g.batch(3)
    store.add(a.raw)
    report = store.add_many([a.raw, b"garbage", b.raw, c.raw, b.raw])
    assert report.added == [b.id, c.id]
    assert report.duplicates == [a.id, b.id]
    assert [i for i, _ in report.rejected] == [1] and "msgpack" in report.rejected[0][1]
    assert store.count() == 3


def test_only_byte_identical_copies_skip_verification_as_duplicates(store):
    rec = g.result(g.identity(1))
    store.add(rec.raw)
    env = canonical.decode(rec.raw, max_len=1 << 16)
    same_body_forged_sig = canonical.encode({"body": env["body"], "sig": bytes(64)})
    assert store.exact_duplicates([b"junk", rec.raw, same_body_forged_sig]) == {1: rec.id}
    report = store.add_many([rec.raw, same_body_forged_sig])
    assert report.duplicates == [rec.id]
    assert report.rejected == [(1, "sig: signature does not verify against the author key")]
    assert store.get_raw(rec.id) == rec.raw


def test_add_signed_stores_our_own_record_and_its_lineage(store):
    parent = g.result(g.identity(1), i=1)
    child = g.result(g.identity(1), i=2, parents=(parent.id,))
    assert store.add_signed(parent) and store.add_signed(child)
    assert [r.id for r in store.ancestors(child.id)] == [parent.id]
    assert [r.id for r in store.descendants(parent.id)] == [child.id]


def test_query_filters_by_bench_author_candidate_kind_subject_and_time(store):
    alice, bob = g.identity(1), g.identity(2)
    same_config = [g.result(alice, i=0), g.result(bob, i=6)]  # i % 6 == 0: the same diff
    other = g.result(alice, i=1)
    golf = g.result(bob, i=2, bench=g.GOLF)
    att = g.attestation(bob, other)
    store.add_many([r.raw for r in (*same_config, other, golf, att)])

    assert {r.id for r in store.query(bench=g.GOLF)} == {golf.id}
    assert {r.id for r in store.query(author=alice.public_hex)} == {same_config[0].id, other.id}
    assert {r.id for r in store.query(candidate=same_config[0].record.candidate)} == {r.id for r in same_config}
    assert [r.id for r in store.query(kind="attestation")] == [att.id]
    assert [r.id for r in store.query(subject=other.id)] == [att.id]
    in_window = store.query(since_ms=other.created_ms, until_ms=golf.created_ms)
    assert [r.id for r in in_window] == [other.id, att.id]


def test_query_orders_newest_or_best_first_and_limits(store):
    records = g.batch(6)
    store.add_many([r.raw for r in records])
    assert [r.id for r in store.query(order="-created", limit=2)] == [records[5].id, records[4].id]
    by_bpb = store.query(order="val_bpb")
    assert [r.record.metrics.val_bpb for r in by_bpb] == sorted(r.record.metrics.val_bpb for r in records)
    with pytest.raises(ValueError, match="unknown order"):
        store.query(order="random")


def test_counts_by_bench_kind_and_author(store):
    alice, bob = g.identity(1), g.identity(2)
    a = g.batch(3, who=alice)
    b = g.batch(2, who=bob, bench=g.GOLF)
    att = g.attestation(bob, a[0])
    store.add_many([r.raw for r in (*a, *b, att)])
    assert store.count() == 6
    assert store.count(bench=g.SMOKE) == 4 and store.count(author=bob.public_hex) == 3
    assert store.benches() == [(g.SMOKE, 4), (g.GOLF, 2)]
    assert store.authors(g.SMOKE) == [(alice.public_hex, 3), (bob.public_hex, 1)]
    assert store.count_by_author(bob.public_hex, g.GOLF) == 2
    assert store.kinds() == [("attestation", 1), ("result", 5)]


def test_missing_reports_exactly_the_absent_ids_among_ten_thousand(store):
    held = g.batch(40)
    store.add_many([r.raw for r in held])
    absent = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10_000)]
    asked = absent[:5000] + [r.id for r in held] + absent[5000:] + absent[:3]  # with repeats
    assert store.missing(asked) == absent
    assert store.missing(r.id for r in held) == []


def test_raw_many_returns_held_envelopes_in_the_order_asked(store):
    records = g.batch(5)
    store.add_many([r.raw for r in records])
    asked = [records[3].id, "ff" * 32, records[0].id, records[3].id]
    assert store.raw_many(asked) == [records[3].raw, records[0].raw]


def test_lineage_walks_ancestors_and_descendants_and_names_absent_parents(store):
    who = g.identity(1)
    lost = "ab" * 32  # a parent the pool never received
    root = g.result(who, i=1)
    mid = g.result(who, i=2, parents=(root.id, lost))
    other = g.result(who, i=3)
    leaf = g.result(who, i=4, parents=(mid.id, other.id))
    grandchild = g.result(who, i=5, parents=(leaf.id,))
    store.add_many([r.raw for r in (grandchild, leaf, other, mid, root)])  # children first

    info = store.lineage(leaf.id)
    assert info.record.id == leaf.id
    assert [r.id for r in info.ancestors] == [root.id, mid.id, other.id]  # oldest first
    assert [r.id for r in info.descendants] == [grandchild.id]
    assert info.missing == [lost]
    assert [r.id for r in store.descendants(root.id)] == [mid.id, leaf.id, grandchild.id]
    assert store.ancestors(root.id) == []


def test_lineage_ends_on_a_cycle_of_parent_links(store):
    # Content ids make a real cycle impossible; a damaged table must still not hang the walk.
    a, b = g.result(g.identity(1), i=1), g.result(g.identity(1), i=2, parents=())
    store.add_many([a.raw, b.raw])
    conn = sqlite3.connect(store.path)
    with conn:
        conn.executemany("INSERT INTO parents (child, parent) VALUES (?, ?)", [(a.id, b.id), (b.id, a.id)])
    conn.close()
    assert [r.id for r in store.ancestors(a.id)] == [b.id]
    assert [r.id for r in store.descendants(a.id)] == [b.id]


def test_summary_digest_is_sha256_of_sorted_ids_per_hour_and_tracks_new_records(store):
    records = g.batch(150)  # one per minute: three hours
    store.add_many([r.raw for r in records[:149]])
    before = store.summary(g.SMOKE)
    assert sum(b.count for b in before) == 149
    for bucket in before:
        ids = store.ids_between(g.SMOKE, bucket.start_ms, bucket.start_ms + BUCKET_MS)
        assert ids == sorted(ids) and len(ids) == bucket.count
        assert bucket.digest == hashlib.sha256(b"".join(bytes.fromhex(i) for i in ids)).hexdigest()
    store.add(records[149].raw)
    after = store.summary(g.SMOKE)
    changed = [(b0, b1) for b0, b1 in zip(before, after) if b0 != b1]
    assert len(after) == len(before) and len(changed) == 1
    assert changed[0][1].count == changed[0][0].count + 1
    assert store.summary(g.GOLF) == []


def test_summary_with_other_bucket_sizes_matches_the_hour_buckets_merged(store):
    records = g.batch(150)
    store.add_many([r.raw for r in records])
    hours = store.summary(g.SMOKE)
    two_hours = store.summary(g.SMOKE, bucket_ms=2 * BUCKET_MS)
    assert sum(b.count for b in two_hours) == 150
    for bucket in two_hours:
        ids = [i for h in hours if bucket.start_ms <= h.start_ms < bucket.start_ms + 2 * BUCKET_MS
               for i in store.ids_between(g.SMOKE, h.start_ms, h.start_ms + BUCKET_MS)]
        assert bucket.digest == bucket_digest(ids) and bucket.count == len(ids)
    with pytest.raises(ValueError, match="bucket_ms"):
        store.summary(g.SMOKE, bucket_ms=0)


def test_pools_holding_the_same_records_have_the_same_summary_whatever_the_order(tmp_path):
    records = g.batch(90) + [g.attestation(g.identity(2), r, i=k) for k, r in enumerate(g.batch(5))]
    with PoolStore(tmp_path / "a.sqlite") as a, PoolStore(tmp_path / "b.sqlite") as b:
        a.add_many([r.raw for r in records])
        for r in reversed(records):
            b.add(r.raw)
        b.summary(g.SMOKE)  # digests computed before the duplicates below arrive
        b.add_many([r.raw for r in records[:10]])
        assert a.summary(g.SMOKE) == b.summary(g.SMOKE)


def test_unique_prefixes_complete_record_and_candidate_ids(store):
    records = g.batch(12)
    store.add_many([r.raw for r in records])
    target = records[7]
    assert store.complete_id(target.id[:10].upper()) == [target.id]
    assert len(store.complete_id("", limit=5)) == 5
    cand = target.record.candidate
    assert store.complete_candidate(cand[:8]) == [cand]


def test_a_pool_from_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "pool.sqlite"
    with PoolStore(path) as s:
        s.add(g.result(g.identity(1)).raw)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO schema_version (version, applied_ms, what) VALUES (99, 0, 'from the future')")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match=r"version 99.*at most 2"):
        PoolStore(path)
    assert path.read_bytes() == before


def test_a_version_one_pool_is_migrated_and_keeps_its_records(tmp_path):
    path = tmp_path / "pool.sqlite"
    rec = g.result(g.identity(1))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL, what TEXT NOT NULL)")
    for statement in schema._statements(schema.MIGRATIONS[0][2]):
        conn.execute(statement)
    conn.execute("INSERT INTO schema_version VALUES (1, 0, 'v1')")
    conn.execute(
        "INSERT INTO records (id, kind, bench, author, created_ms, received_ms, candidate, subject, val_bpb, raw)"
        " VALUES (?, 'result', ?, ?, ?, 0, ?, NULL, 2.5, ?)",
        (rec.id, rec.bench, rec.author, rec.created_ms, rec.record.candidate, rec.raw),
    )
    conn.close()
    with PoolStore(path) as s:
        assert s.schema_version() == schema.SCHEMA_VERSION == 2
        assert s.get(rec.id).record == rec.record
    from p2pgolf.pool.trust import TrustStore

    with TrustStore(path) as t:
        assert t.unknown_weight == 0.1

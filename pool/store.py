"""The pool: a grow-only SQLite set of valid signed records, keyed by record id.

Guarantees:
- Only records that `protocol.signing.decode_record` accepts (or that our own signer made)
  are stored, byte for byte as they arrived; nothing is ever updated or deleted.
- Adding is idempotent: a record already present is reported as a duplicate, never rewritten,
  so merging pools is set union.
- Many processes may read and write one file at once (WAL, busy timeout, BEGIN IMMEDIATE);
  a writer killed at any point leaves every committed record intact. Our own records are
  committed with a full sync so they also survive a power cut.
- Sync support is cheap: per bench and hour the store keeps a count and a digest (sha256
  over the sorted 32-byte ids), recomputed lazily for the hours that changed.

The same file holds the trust store (pool/trust.py).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgpack

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.records import parse_body
from p2pgolf.protocol.signing import MAX_RECORD_BYTES, SignedRecord, decode_record, record_id

from p2pgolf.pool import schema

BUCKET_MS = 3_600_000  # the sync bucket kept precomputed: one hour of created_ms
ORDERS: dict[str, str] = {
    "created": "created_ms ASC, id ASC",
    "-created": "created_ms DESC, id DESC",
    "received": "received_ms ASC, id ASC",
    "-received": "received_ms DESC, id DESC",
    "val_bpb": "val_bpb ASC, id ASC",
    "-val_bpb": "val_bpb DESC, id DESC",
    "id": "id ASC",
}


@dataclass(frozen=True)
class AddOutcome:
    """What `PoolStore.add` did with one envelope."""

    id: str
    added: bool  # False: the record was already in the pool


@dataclass(frozen=True)
class AddReport:
    """What `PoolStore.add_many` did: ids added, ids already present, and (index, reason) rejects."""

    added: list[str]
    duplicates: list[str]
    rejected: list[tuple[int, str]]


class Row(NamedTuple):
    """What the pool stores of one verified record, flat: cheap to send from a verifying
    process (a tuple, no nested objects) and to insert. `Row.of` makes one from a SignedRecord."""

    id: str
    kind: str
    bench: str
    author: str
    created_ms: int
    candidate: str | None
    subject: str | None
    val_bpb: float
    parents: tuple[str, ...]
    raw: bytes
    budget_s: float | None = None  # a result's; None for an attestation

    @classmethod
    def of(cls, rec: SignedRecord) -> "Row":
        r = rec.record
        if r.kind == "result":
            return cls(rec.id, r.kind, r.bench, r.author, r.created_ms, r.candidate, None, r.metrics.val_bpb, tuple(r.parents), rec.raw, r.budget_s)
        return cls(rec.id, r.kind, r.bench, r.author, r.created_ms, None, r.subject, r.metrics.val_bpb, (), rec.raw)


@dataclass(frozen=True)
class Bucket:
    """The records of one bench whose created_ms lies in [start_ms, start_ms + bucket_ms)."""

    start_ms: int
    count: int
    digest: str  # bucket_digest of their ids


@dataclass(frozen=True)
class Lineage:
    """A record's ancestors and descendants (oldest first) and the ancestor ids we lack."""

    id: str
    record: SignedRecord | None
    ancestors: list[SignedRecord]
    descendants: list[SignedRecord]
    missing: list[str]


def bucket_digest(ids: Iterable[str]) -> str:
    """Hex sha256 over the concatenated 32-byte ids in ascending order (the sync digest)."""
    return hashlib.sha256(b"".join(bytes.fromhex(i) for i in sorted(ids))).hexdigest()


class PoolStore:
    """The local pool in one SQLite file. Safe to share between threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._conn = schema.connect(self.path)
        self._lock = threading.RLock()

    # --- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "PoolStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- adding ------------------------------------------------------------------------

    def add(self, raw: bytes, *, now_ms: int | None = None) -> AddOutcome:
        """Validate, verify and store one envelope. ProtocolError (nothing written) if invalid."""
        now_ms = _now_ms() if now_ms is None else now_ms
        rec = decode_record(raw, now_ms=now_ms)
        with self._write() as conn:
            added = _insert(conn, rec, now_ms)
        return AddOutcome(rec.id, added)

    def add_signed(self, rec: SignedRecord, *, now_ms: int | None = None) -> bool:
        """Store a record already verified (e.g. from our own signer), durably. True if new."""
        with self._write(durable=True) as conn:
            return _insert(conn, rec, _now_ms() if now_ms is None else now_ms)

    def add_many(self, raws: Iterable[bytes], *, now_ms: int | None = None) -> AddReport:
        """Validate and store many envelopes in one transaction. Bad ones are reported, not raised.

        An envelope byte-identical to one already stored is a duplicate without being verified
        again: those exact bytes passed every check when they were stored.
        """
        now_ms = _now_ms() if now_ms is None else now_ms
        raws = list(raws)
        known = self.exact_duplicates(raws)
        decoded: list[SignedRecord] = []
        rejected: list[tuple[int, str]] = []
        # Verify before taking the write lock, so other writers wait only for the inserts.
        for index, raw in enumerate(raws):
            if index in known:
                continue
            try:
                decoded.append(decode_record(raw, now_ms=now_ms))
            except ProtocolError as exc:
                rejected.append((index, str(exc)))
        report = self.add_verified(decoded, now_ms=now_ms)
        return AddReport(report.added, [known[i] for i in sorted(known)] + report.duplicates, rejected)

    def exact_duplicates(self, raws: list[bytes]) -> dict[int, str]:
        """{index: id} of the envelopes in `raws` whose exact bytes are already stored.

        Cheap (an unverified parse, a hash and one lookup per 500), so a caller can skip
        verifying records it already holds. Anything malformed is simply not a duplicate.
        """
        ids: dict[int, str] = {}
        for index, raw in enumerate(raws):
            if len(raw) > MAX_RECORD_BYTES:
                continue
            try:
                body = msgpack.unpackb(raw, raw=False)["body"]
            except Exception:  # not ours to judge here; decode_record will say what is wrong
                continue
            if type(body) is bytes:
                ids[index] = record_id(body).hex()
        if not ids:
            return {}
        wanted = list(dict.fromkeys(ids.values()))
        stored: dict[str, bytes] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            stored.update((i, bytes(r)) for i, r in self._all(f"SELECT id, raw FROM records WHERE id IN ({marks})", chunk))
        return {index: id_ for index, id_ in ids.items() if stored.get(id_) == raws[index]}

    def add_verified(self, records: Iterable[SignedRecord | Row], *, now_ms: int | None = None) -> AddReport:
        """Store records that `decode_record` or our signer produced (or their `Row`s), in one transaction."""
        now_ms = _now_ms() if now_ms is None else now_ms
        added: list[str] = []
        duplicates: list[str] = []
        records = list(records)
        if records:
            with self._write() as conn:
                added, duplicates = _insert_many(conn, records, now_ms)
        return AddReport(added, duplicates, [])

    # --- reading -----------------------------------------------------------------------

    def get(self, id: str) -> SignedRecord | None:
        raw = self.get_raw(id)
        return None if raw is None else _load(raw)

    def get_raw(self, id: str) -> bytes | None:
        row = self._one("SELECT raw FROM records WHERE id = ?", (id,))
        return None if row is None else bytes(row[0])

    def has(self, id: str) -> bool:
        return self._one("SELECT 1 FROM records WHERE id = ?", (id,)) is not None

    def missing(self, ids: Iterable[str]) -> list[str]:
        """The ids among `ids` that the pool lacks, in their first-seen order, each once."""
        wanted = list(dict.fromkeys(ids))
        present: set[str] = set()
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            present.update(r[0] for r in self._all(f"SELECT id FROM records WHERE id IN ({marks})", chunk))
        return [i for i in wanted if i not in present]

    def query(
        self,
        *,
        bench: str | None = None,
        author: str | None = None,
        candidate: str | None = None,
        kind: str | None = None,
        subject: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        order: str = "created",
    ) -> list[SignedRecord]:
        """Records matching every given filter; created_ms in [since_ms, until_ms).

        `order` is one of ORDERS ("created", "-created" for newest first, "val_bpb", ...).
        """
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; expected one of {', '.join(ORDERS)}")
        where, params = _filters(bench=bench, author=author, candidate=candidate, kind=kind, subject=subject)
        if since_ms is not None:
            where.append("created_ms >= ?")
            params.append(since_ms)
        if until_ms is not None:
            where.append("created_ms < ?")
            params.append(until_ms)
        sql = "SELECT raw FROM records" + _where(where) + f" ORDER BY {ORDERS[order]}"
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            sql += " LIMIT ?"
            params.append(limit)
        return [_load(bytes(r[0])) for r in self._all(sql, params)]

    def rows_after(self, bench: str, rowid: int) -> list[tuple[int, str, str, str | None, bytes]]:
        """(rowid, id, kind, candidate, raw) of the records of `bench` stored after row `rowid`,
        in storage order: the pool only grows, so a reader that keeps the last rowid it saw reads
        each record once (pool/evidence_cache.py)."""
        rows = self._all("SELECT rowid, id, kind, candidate, raw FROM records WHERE bench = ? AND rowid > ? ORDER BY rowid", (bench, rowid))
        return [(r, i, k, c, bytes(raw)) for r, i, k, c, raw in rows]

    def script_results(self, bench: str) -> list[SignedRecord]:
        """The results of `bench` whose envelope holds the bytes `script:` (every result with a
        script base does; a note may too, so callers still check the base), oldest first. The
        byte filter runs in SQLite, so a pool of 100,000 built-in results costs one scan."""
        rows = self._all(
            "SELECT raw FROM records WHERE bench = ? AND kind = 'result' AND instr(raw, ?) > 0 ORDER BY created_ms, id",
            (bench, b"script:"),
        )
        return [_load(bytes(r[0])) for r in rows]

    def iter_raw(self, *, bench: str | None = None, batch: int = 1000) -> Iterator[tuple[str, bytes]]:
        """(id, raw) of every record (of `bench`), oldest first, read in pages of `batch`."""
        last: tuple[int, str] = (-1, "")
        while True:
            where, params = _filters(bench=bench)
            where.append("(created_ms, id) > (?, ?)")
            params.extend(last)
            rows = self._all(
                "SELECT id, raw, created_ms FROM records" + _where(where) + " ORDER BY created_ms, id LIMIT ?",
                [*params, batch],
            )
            for id_, raw, _ in rows:
                yield id_, bytes(raw)
            if len(rows) < batch:
                return
            last = (rows[-1][2], rows[-1][0])

    def count(self, *, bench: str | None = None, author: str | None = None) -> int:
        if author is None:
            # the hour buckets count every record (kept in the transaction that stores it): a
            # sum over ~24 rows a day instead of a scan of the records (status asks this often)
            where, params = _filters(bench=bench)
            return int(self._one("SELECT coalesce(sum(count), 0) FROM buckets" + _where(where), params)[0])
        where, params = _filters(bench=bench, author=author)
        return int(self._one("SELECT count(*) FROM records" + _where(where), params)[0])

    def benches(self) -> list[tuple[str, int]]:
        """(bench id, record count), most records first."""
        return [(b, n) for b, n in self._all("SELECT bench, count(*) AS n FROM records GROUP BY bench ORDER BY n DESC, bench")]

    def authors(self, bench: str | None = None) -> list[tuple[str, int]]:
        """(author key, record count) overall or on one bench, most records first."""
        where, params = _filters(bench=bench)
        sql = "SELECT author, count(*) AS n FROM records" + _where(where) + " GROUP BY author ORDER BY n DESC, author"
        return [(a, n) for a, n in self._all(sql, params)]

    def kinds(self, bench: str | None = None) -> list[tuple[str, int]]:
        """(kind, record count) overall or on one bench."""
        where, params = _filters(bench=bench)
        return [(k, n) for k, n in self._all("SELECT kind, count(*) FROM records" + _where(where) + " GROUP BY kind ORDER BY kind", params)]

    def schema_version(self) -> int:
        with self._lock:
            return schema.current_version(self._conn)

    def untrusted_usage(self, own_key: str | None = None) -> tuple[int, int]:
        """(bytes, records) held from keys that are neither `own_key` nor own or pinned in the
        trust table (blocked keys' records count: they take space too)."""
        row = self._one(
            "SELECT coalesce(sum(length(raw)), 0), count(*) FROM records WHERE author != ?"
            " AND author NOT IN (SELECT key FROM trust WHERE status IN ('own', 'pinned'))",
            (own_key or "",),
        )
        return int(row[0]), int(row[1])

    def count_by_author(self, author: str, bench: str) -> int:
        return self.count(bench=bench, author=author)

    def complete_id(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Record ids starting with `prefix` (lowercase hex), at most `limit`."""
        return self._prefix("id", prefix, limit)

    def complete_candidate(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Candidate ids starting with `prefix` (lowercase hex), at most `limit`."""
        return self._prefix("candidate", prefix, limit)

    # --- lineage -----------------------------------------------------------------------

    def ancestors(self, id: str) -> list[SignedRecord]:
        """Every stored record reachable through parent links from `id`, oldest first."""
        return self.lineage(id).ancestors

    def descendants(self, id: str) -> list[SignedRecord]:
        """Every stored record that has `id` as an ancestor, oldest first."""
        return self.lineage(id).descendants

    def lineage(self, id: str) -> Lineage:
        """Ancestors, descendants and the ancestor ids the pool lacks, from one snapshot.

        The recursive queries use UNION, which drops rows already seen, so they end even if
        parent links formed a cycle.
        """
        with self._read() as conn:
            raw = conn.execute("SELECT raw FROM records WHERE id = ?", (id,)).fetchone()
            up = conn.execute(
                """WITH RECURSIVE up(id) AS (
                       SELECT parent FROM parents WHERE child = ?1
                       UNION SELECT p.parent FROM parents p JOIN up ON p.child = up.id)
                   SELECT up.id, r.raw FROM up LEFT JOIN records r ON r.id = up.id
                   WHERE up.id != ?1 ORDER BY r.created_ms, up.id""",
                (id,),
            ).fetchall()
            down = conn.execute(
                """WITH RECURSIVE down(id) AS (
                       SELECT child FROM parents WHERE parent = ?1
                       UNION SELECT p.child FROM parents p JOIN down ON p.parent = down.id)
                   SELECT r.raw FROM down JOIN records r ON r.id = down.id
                   WHERE down.id != ?1 ORDER BY r.created_ms, r.id""",
                (id,),
            ).fetchall()
        return Lineage(
            id=id,
            record=None if raw is None else _load(bytes(raw[0])),
            ancestors=[_load(bytes(r)) for _, r in up if r is not None],
            descendants=[_load(bytes(r[0])) for r in down],
            missing=sorted(i for i, r in up if r is None),
        )

    # --- sync support ------------------------------------------------------------------

    def summary(self, bench: str, *, bucket_ms: int = BUCKET_MS) -> list[Bucket]:
        """(start_ms, count, digest) of each non-empty bucket of `bench`, oldest first.

        For the default hour buckets this reads the precomputed table (recomputing only the
        digests of hours that changed since the last call); other sizes scan the bench index.
        """
        if type(bucket_ms) is not int or bucket_ms <= 0:
            raise ValueError(f"bucket_ms must be a positive integer, got {bucket_ms!r}")
        if bucket_ms != BUCKET_MS:
            return self._summary_scan(bench, bucket_ms)
        if self._one("SELECT 1 FROM buckets WHERE bench = ? AND digest IS NULL LIMIT 1", (bench,)):
            # Under the write lock, so no insert can slip between reading ids and storing the digest.
            with self._write() as conn:
                stale = conn.execute("SELECT start_ms FROM buckets WHERE bench = ? AND digest IS NULL", (bench,)).fetchall()
                for (start,) in stale:
                    ids = _ids_in(conn, bench, start, start + BUCKET_MS)
                    conn.execute(
                        "UPDATE buckets SET digest = ?, count = ? WHERE bench = ? AND start_ms = ?",
                        (bucket_digest(ids), len(ids), bench, start),
                    )
        rows = self._all("SELECT start_ms, count, digest FROM buckets WHERE bench = ? ORDER BY start_ms", (bench,))
        return [Bucket(s, n, d) for s, n, d in rows]

    def ids_between(self, bench: str, start_ms: int, end_ms: int) -> list[str]:
        """Sorted ids of the records of `bench` with start_ms <= created_ms < end_ms."""
        with self._lock:
            return _ids_in(self._conn, bench, start_ms, end_ms)

    def raw_many(self, ids: Iterable[str]) -> list[bytes]:
        """The envelopes of the given ids that we hold, in the order asked, each once."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, bytes] = {}
        for chunk in _chunks(wanted):
            marks = ",".join("?" * len(chunk))
            found.update((i, bytes(r)) for i, r in self._all(f"SELECT id, raw FROM records WHERE id IN ({marks})", chunk))
        return [found[i] for i in wanted if i in found]

    # --- helpers -----------------------------------------------------------------------

    def _summary_scan(self, bench: str, bucket_ms: int) -> list[Bucket]:
        groups: dict[int, list[str]] = {}
        for created, id_ in self._all("SELECT created_ms, id FROM records WHERE bench = ? ORDER BY created_ms", (bench,)):
            groups.setdefault(created - created % bucket_ms, []).append(id_)
        return [Bucket(start, len(ids), bucket_digest(ids)) for start, ids in groups.items()]

    def _prefix(self, column: str, prefix: str, limit: int) -> list[str]:
        prefix = prefix.lower()
        # Every hex id starting with `prefix` sorts in [prefix, prefix + "g").
        return [r[0] for r in self._all(f"SELECT DISTINCT {column} FROM records WHERE {column} >= ? AND {column} < ? ORDER BY {column} LIMIT ?", (prefix, prefix + "g", limit))]

    def _one(self, sql: str, params: Iterable = ()) -> tuple | None:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchone()

    def _all(self, sql: str, params: Iterable = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")  # one snapshot for several SELECTs
            try:
                yield conn
            finally:
                conn.execute("COMMIT")


def _insert(conn: sqlite3.Connection, rec: SignedRecord, received_ms: int) -> bool:
    r = rec.record
    if r.kind == "result":
        candidate, subject, parents = r.candidate, None, r.parents
    else:
        candidate, subject, parents = None, r.subject, ()
    cur = conn.execute(
        "INSERT INTO records (id, kind, bench, author, created_ms, received_ms, candidate, subject, val_bpb, raw)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (rec.id, r.kind, r.bench, r.author, r.created_ms, received_ms, candidate, subject, r.metrics.val_bpb, rec.raw),
    )
    if cur.rowcount == 0:
        return False
    if parents:
        conn.executemany("INSERT INTO parents (child, parent) VALUES (?, ?)", [(rec.id, p) for p in parents])
    conn.execute(
        "INSERT INTO buckets (bench, start_ms, count, digest) VALUES (?, ?, 1, NULL)"
        " ON CONFLICT (bench, start_ms) DO UPDATE SET count = count + 1, digest = NULL",
        (r.bench, r.created_ms - r.created_ms % BUCKET_MS),
    )
    return True


def _insert_many(conn: sqlite3.Connection, records: list[SignedRecord | Row], received_ms: int) -> tuple[list[str], list[str]]:
    """`_insert` for a batch inside one write transaction, with one statement per table: the
    ids already stored are looked up first (BEGIN IMMEDIATE keeps other writers out until
    commit, so the rest are surely new) and bucket counts are added once per hour."""
    present: set[str] = set()
    ids = list(dict.fromkeys(rec.id for rec in records))
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        present.update(r[0] for r in conn.execute(f"SELECT id FROM records WHERE id IN ({marks})", chunk))
    added: list[str] = []
    duplicates: list[str] = []
    rows: list[tuple] = []
    parent_rows: list[tuple[str, str]] = []
    hours: dict[tuple[str, int], int] = {}
    for rec in records:
        if rec.id in present:
            duplicates.append(rec.id)
            continue
        present.add(rec.id)  # the same record twice in one batch is stored once
        added.append(rec.id)
        r = rec if isinstance(rec, Row) else Row.of(rec)
        parent_rows.extend((r.id, p) for p in r.parents)
        rows.append((r.id, r.kind, r.bench, r.author, r.created_ms, received_ms, r.candidate, r.subject, r.val_bpb, r.raw))
        hour = (r.bench, r.created_ms - r.created_ms % BUCKET_MS)
        hours[hour] = hours.get(hour, 0) + 1
    if rows:
        conn.executemany(
            "INSERT INTO records (id, kind, bench, author, created_ms, received_ms, candidate, subject, val_bpb, raw)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    if parent_rows:
        conn.executemany("INSERT INTO parents (child, parent) VALUES (?, ?)", parent_rows)
    if hours:
        conn.executemany(
            "INSERT INTO buckets (bench, start_ms, count, digest) VALUES (?, ?, ?, NULL)"
            " ON CONFLICT (bench, start_ms) DO UPDATE SET count = count + excluded.count, digest = NULL",
            [(bench, start, n) for (bench, start), n in hours.items()],
        )
    return added, duplicates


def _load(raw: bytes) -> SignedRecord:
    """Re-parse a stored envelope. It was validated and verified on the way in, so this skips
    the signature check and the future-time check (a stored record only gets older)."""
    envelope = msgpack.unpackb(raw, raw=False)
    body, signature = envelope["body"], envelope["sig"]
    record = parse_body(msgpack.unpackb(body, raw=False), now_ms=2**62)
    return SignedRecord(id=record_id(body).hex(), record=record, body=body, signature=signature, raw=raw)


def _ids_in(conn: sqlite3.Connection, bench: str, start_ms: int, end_ms: int) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM records WHERE bench = ? AND created_ms >= ? AND created_ms < ? ORDER BY id",
        (bench, start_ms, end_ms),
    ).fetchall()
    return [r[0] for r in rows]


def _filters(**fields: str | None) -> tuple[list[str], list]:
    where, params = [], []
    for column, value in fields.items():
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    return where, params


def _where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _now_ms() -> int:
    return int(time.time() * 1000)

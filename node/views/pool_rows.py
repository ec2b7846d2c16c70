"""The pool as flat rows for views: one `Row` per stored record, read straight from the SQLite
file (read-only) and decoded without re-checking signatures (they were checked on the way in).

Guarantees: `read_rows` never writes the pool; a record that no longer parses is skipped, not
fatal; rows come oldest first (created_ms, id). `infer_operator` names the proposal operator a
record's shape shows (records do not carry the operator on the wire).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack


# What each operator's records look like (the research loop's _record): a replicate or a try
# of a peer is a `reproduce` attestation whose note says "<operator> by the research loop".
OPERATOR_ORDER = ("baseline", "mutate", "recombine", "replicate", "try_peer", "verify", "imported")


@dataclass(slots=True)  # not frozen: a 100,000-row pool builds faster (treat rows as read-only)
class Row:
    id: str
    kind: str  # result | attestation
    author: str
    created_ms: int
    received_ms: int
    hw: str
    val_bpb: float
    candidate: str = ""  # results: the candidate id; attestations: "" (see subject)
    base: str = ""
    diff: dict[str, Any] = field(default_factory=dict)
    parents: tuple[str, ...] = ()
    subject: str = ""
    method: str = ""
    note: str = ""

    @property
    def operator(self) -> str:
        return infer_operator(self)


def infer_operator(row: Row) -> str:
    """The proposal operator a record's shape shows: an attestation's note names it (replicate,
    try_peer) or it is a re-evaluation (verify); a result with two or more parents is a
    recombination, with one a mutation, with none a baseline (or an imported claim)."""
    if row.kind == "attestation":
        if row.method == "reeval":
            return "verify"
        word = row.note.split(" ", 1)[0]
        return word if word in ("replicate", "try_peer") else "replicate"
    if row.note.startswith("imported"):
        return "imported"
    if len(row.parents) >= 2:
        return "recombine"
    return "mutate" if row.parents else "baseline"


def read_rows(db_path: str | Path, *, bench: str | None = None, received_after_ms: int | None = None, limit: int | None = None) -> list[Row]:
    """Rows of the pool at `db_path` (of `bench`; received after `received_after_ms`), oldest first."""
    return list(iter_rows(db_path, bench=bench, received_after_ms=received_after_ms, limit=limit))


def iter_rows(db_path: str | Path, *, bench: str | None = None, received_after_ms: int | None = None, limit: int | None = None) -> Iterator[Row]:
    where, params = [], []
    if bench is not None:
        where.append("bench = ?")
        params.append(bench)
    if received_after_ms is not None:
        where.append("received_ms > ?")
        params.append(received_after_ms)
    sql = "SELECT id, received_ms, candidate, raw FROM records" + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY received_ms, id" if received_after_ms is not None else " ORDER BY created_ms, id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    conn = connect_read_only(db_path)
    try:
        for rid, received_ms, candidate, raw in conn.execute(sql, params):
            row = _row(rid, int(received_ms), candidate, bytes(raw))
            if row is not None:
                yield row
    finally:
        conn.close()


def connect_read_only(db_path: str | Path) -> sqlite3.Connection:
    """A read-only connection (WAL readers never block the node's writer)."""
    conn = sqlite3.connect(f"file:{Path(db_path).resolve()}?mode=ro", uri=True, timeout=30)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _row(rid: str, received_ms: int, candidate: str | None, raw: bytes) -> Row | None:
    # The body's fields as stored (validated when the record came in), without building the
    # protocol's dataclasses: ten times faster, which a 100,000-record report needs.
    try:
        body = msgpack.unpackb(msgpack.unpackb(raw, raw=False)["body"], raw=False)
        hw = body["hw"]
        common = dict(id=rid, kind=body["kind"], author=body["author"], created_ms=int(body["created_ms"]), received_ms=received_ms,
                      hw=f"{hw['accel']}:{hw['model']}:x{hw['count']}", val_bpb=float(body["metrics"]["val_bpb"]), note=str(body["note"]))  # fmt: skip
        if body["kind"] == "attestation":
            return Row(**common, subject=body["subject"], method=body["method"])
        return Row(**common, candidate=candidate or "", base=body["base"], diff=dict(body["diff"]), parents=tuple(body["parents"]))
    except (KeyError, TypeError, ValueError, msgpack.UnpackException):  # a record this version no longer reads
        return None

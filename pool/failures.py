"""Candidates that failed on this node: remembered per benchmark and hardware class, with why.

A run that crashed, ran out of memory, came out over the size cap, timed out or whose plan the
trainer refused says nothing about the candidate's score, so the estimate stays as it was and
the bandit would pick the same candidate again after the back-off. `FailureMemory` keeps each
such failure in the pool file (table `failed_candidates`, made on first use with CREATE TABLE IF
NOT EXISTS: node-local state that no other reader needs, so the pool's schema version stays as it
is and an older p2pgolf ignores the table), and `avoid` names the candidates not to propose again
on this class.

Guarantees (tests/test_failed_candidates.py):
- `record` then `avoid` names the candidate, across a reopen of the file; other classes and
  benchmarks are unaffected.
- A failure is lifted when something changes: a result for the candidate from a trusted key
  (own or pinned) stored after the failure, or `retry` (the user asks: `p2pgolf pool retry`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2pgolf.pool import schema

_TABLE = """CREATE TABLE IF NOT EXISTS failed_candidates (
    bench     TEXT NOT NULL,
    hw        TEXT NOT NULL,
    candidate TEXT NOT NULL,
    status    TEXT NOT NULL,
    reason    TEXT NOT NULL,
    failed_ms INTEGER NOT NULL,
    times     INTEGER NOT NULL,
    PRIMARY KEY (bench, hw, candidate)
) WITHOUT ROWID"""

if TYPE_CHECKING:
    from p2pgolf.pool.store import PoolStore


@dataclass(frozen=True)
class Failure:
    """One candidate that failed here: where, why, when, how often."""

    bench: str
    hw: str
    candidate: str
    status: str  # the journal's end status: failed, oversize, ...
    reason: str
    failed_ms: int
    times: int


class FailureMemory:
    """Failed candidates in the pool file. `FailureMemory(pool_store)` shares the pool's connection."""

    def __init__(self, source: "str | Path | PoolStore"):
        if isinstance(source, (str, Path)):
            self._conn = schema.connect(source)
            self._lock = threading.RLock()
        else:
            self._conn = source._conn
            self._lock = source._lock
        with self._lock:
            self._conn.execute(_TABLE)

    def record(self, bench: str, hw: str, candidate: str, status: str, reason: str, *, now_ms: int | None = None) -> None:
        """Remember that `candidate` failed on class `hw` (again, if it had before)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        with self._lock:
            self._conn.execute(
                "INSERT INTO failed_candidates (bench, hw, candidate, status, reason, failed_ms, times) VALUES (?, ?, ?, ?, ?, ?, 1)"
                " ON CONFLICT (bench, hw, candidate) DO UPDATE SET status = excluded.status, reason = excluded.reason,"
                " failed_ms = excluded.failed_ms, times = times + 1",
                (bench, hw, candidate, status, reason[:280], now_ms),
            )

    def failures(self, bench: str | None = None, hw: str | None = None) -> list[Failure]:
        """Every remembered failure (of `bench`, on `hw`), newest first."""
        where, params = [], []
        for column, value in (("bench", bench), ("hw", hw)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT bench, hw, candidate, status, reason, failed_ms, times FROM failed_candidates"
        sql += (" WHERE " + " AND ".join(where)) if where else ""
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY failed_ms DESC, candidate", params).fetchall()
        return [Failure(*row) for row in rows]

    def avoid(self, bench: str, hw: str, trusted: Callable[[str], bool]) -> set[str]:
        """Candidates that failed on `hw` and not to be tried again: those without a result
        from a trusted key (`trusted(author)`) stored after their failure."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT f.candidate, r.author FROM failed_candidates f LEFT JOIN records r"
                " ON r.candidate = f.candidate AND r.bench = f.bench AND r.kind = 'result' AND r.received_ms > f.failed_ms"
                " WHERE f.bench = ? AND f.hw = ?",
                (bench, hw),
            ).fetchall()
        failed = {c for c, _ in rows}
        lifted = {c for c, author in rows if author is not None and trusted(author)}
        return failed - lifted

    def retry(self, candidate: str | None = None) -> int:
        """Forget the failures of `candidate` (every candidate if None); returns how many rows went."""
        with self._lock:
            if candidate is None:
                cur = self._conn.execute("DELETE FROM failed_candidates")
            else:
                cur = self._conn.execute("DELETE FROM failed_candidates WHERE candidate = ?", (candidate,))
            return cur.rowcount

    def complete(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Failed candidate ids starting with `prefix` (lowercase hex)."""
        prefix = prefix.lower()
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT candidate FROM failed_candidates WHERE candidate >= ? AND candidate < ? ORDER BY candidate LIMIT ?", (prefix, prefix + "g", limit)
            ).fetchall()
        return [r[0] for r in rows]

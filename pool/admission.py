"""What a verified record must pass to be stored, whoever brought it: gossip, sync or `pool import`.

`StorageGate.admit(records, ...)` is the storage half of the one admission path (node/limits.py
adds the peer half in front of it: bans, rate limits, bounded decoding and verification). In
order, for each record: its benchmark must be one this pool serves (when the gate has a set of
benchmarks) and a result's `budget_s` must be that benchmark's budget (where the gate knows the
benchmark: the node's own, or a named one at its default budget), its author must not be blocked, a record already held is a duplicate, and a record
by a key that is neither our own nor pinned must fit both the per-key cap and the global quota
of bytes held for unknown keys. Beyond the quota, a record a trusted key (own or pinned) has
attested is still kept (trusted evidence comes first); nothing by our own or a pinned key is ever
refused for space. What passes is stored in one transaction. The gate never raises for a
record: every outcome is a `Verdict`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

from p2pgolf.pool.trust_weights import TRUSTED_STATUSES as TRUSTED
from p2pgolf.protocol.signing import SignedRecord

DEFAULT_UNKNOWN_KEY_CAP = 10_000  # records per unknown author and benchmark
DEFAULT_UNKNOWN_QUOTA_BYTES = 256 * 1024 * 1024  # a season (~100,000 records of ~0.6 KB) fits 4 times
USAGE_REFRESH_S = 30.0  # the quota's usage is recounted from the pool at most this often


class Verdict(enum.Enum):
    """What happened to one incoming record. Only ADDED and DUPLICATE may be forwarded."""

    ADDED = "added"
    DUPLICATE = "duplicate"
    INVALID = "invalid"
    WRONG_BENCH = "wrong-bench"
    BLOCKED = "blocked"
    OVER_CAP = "over-cap"
    OVER_QUOTA = "over-quota"
    RATE_LIMITED = "rate-limited"
    OVER_SHARED_RATE = "over-shared-rate"  # pushed by an unknown key while all peers together were over their shared budget
    BANNED = "banned"
    ERROR = "error"

    @property
    def accepted(self) -> bool:
        return self in (Verdict.ADDED, Verdict.DUPLICATE)


REJECTED = tuple(v for v in Verdict if not v.accepted)


@dataclass(frozen=True)
class QuotaUsage:
    """Bytes of records held from keys that are neither own nor pinned, against the quota."""

    unknown_bytes: int
    unknown_records: int
    quota_bytes: int

    @property
    def share(self) -> float:
        return self.unknown_bytes / self.quota_bytes if self.quota_bytes else 0.0


class StorageGate:
    """The storage checks of admission, on one pool and trust store."""

    def __init__(self, store: Any, trust: Any, bench_ids: frozenset[str] | None, *, own_key: str | None, budgets: dict[str, float] | None = None, clock=time.monotonic) -> None:
        from p2pgolf.protocol.benchmarks import BENCHMARKS

        self.store = store
        self.trust = trust
        self.bench_ids = bench_ids  # None: any benchmark (a file imported by hand)
        self.budgets = {b.id: b.budget_s for b in BENCHMARKS.values()} | dict(budgets or {})  # bench id -> budget_s
        self.own_key = own_key
        self._clock = clock
        self._usage: tuple[int, int] | None = None
        self._usage_at = 0.0
        self._per_key: dict[tuple[str, str], int] = {}  # (bench, author) -> records held, refreshed with the usage

    def usage(self, quota_bytes: int) -> QuotaUsage:
        used, n = self._unknown_usage()
        return QuotaUsage(used, n, quota_bytes)

    def admit(self, records: list[SignedRecord], *, unknown_key_cap: int, unknown_quota_bytes: int) -> tuple[list[Verdict], list[str]]:
        """One verdict per record (in order) and the ids newly stored."""
        verdicts: list[Verdict | None] = [None] * len(records)
        lacking = set(self.store.missing([r.id for r in records]))
        statuses: dict[str, str] = {}
        used, _ = self._unknown_usage()
        per_key = self._per_key
        keep: list[int] = []
        for i, signed in enumerate(records):
            if self.bench_ids is not None and signed.bench not in self.bench_ids:
                verdicts[i] = Verdict.WRONG_BENCH
                continue
            budget = _budget_of(signed)
            if budget is not None and signed.bench in self.budgets and budget != self.budgets[signed.bench]:
                verdicts[i] = Verdict.WRONG_BENCH  # a result under another budget belongs to another benchmark
                continue
            author = signed.author
            if author not in statuses:
                statuses[author] = "own" if author == self.own_key else _trust_status(self.trust, author)
            status = statuses[author]
            if status == "blocked":
                verdicts[i] = Verdict.BLOCKED
                continue
            if signed.id not in lacking:
                verdicts[i] = Verdict.DUPLICATE
                continue
            lacking.discard(signed.id)  # the same record twice in one batch is stored once
            if status not in TRUSTED:
                key = (signed.bench, author)
                if key not in per_key:
                    per_key[key] = self.store.count_by_author(author, signed.bench)
                if per_key[key] >= unknown_key_cap:
                    verdicts[i] = Verdict.OVER_CAP
                    continue
                size = len(signed.raw)
                if used + size > unknown_quota_bytes and not self._trusted_attestation(signed.id):
                    verdicts[i] = Verdict.OVER_QUOTA
                    continue
                per_key[key] += 1
                used += size
            keep.append(i)
        added: list[str] = []
        if keep:
            report = self.store.add_verified([records[i] for i in keep])
            added = report.added
            fresh = set(added)
            grown, count = 0, 0
            for i in keep:
                new = records[i].id in fresh
                verdicts[i] = Verdict.ADDED if new else Verdict.DUPLICATE
                if not new and statuses[records[i].author] not in TRUSTED:
                    per_key[(records[i].bench, records[i].author)] -= 1  # another writer stored it first
                if new and statuses[records[i].author] not in TRUSTED:
                    grown, count = grown + len(records[i].raw), count + 1
            if self._usage is not None:
                self._usage = (self._usage[0] + grown, self._usage[1] + count)
        return [v if v is not None else Verdict.ERROR for v in verdicts], added

    def _unknown_usage(self) -> tuple[int, int]:
        now = self._clock()
        if self._usage is None or now - self._usage_at >= USAGE_REFRESH_S:
            # recounted now and then: other processes (pool import, publish) write the same file
            self._usage = self.store.untrusted_usage(self.own_key)
            self._usage_at = now
            self._per_key.clear()
        return self._usage

    def _trusted_attestation(self, record_id: str) -> bool:
        return any(_trust_status(self.trust, a.author) in TRUSTED or a.author == self.own_key for a in self.store.query(subject=record_id, kind="attestation"))


def _budget_of(rec: Any) -> float | None:
    """A result's budget_s (a SignedRecord or a pool Row); None for an attestation."""
    if hasattr(rec, "record"):
        return getattr(rec.record, "budget_s", None)
    return rec.budget_s


def _trust_status(trust: Any, author: str) -> str:
    """'own', 'pinned', 'blocked' or 'unknown' as a plain string, whatever type the store returns."""
    if trust is None:
        return "unknown"
    status = trust.status(author)
    return str(getattr(status, "value", status))

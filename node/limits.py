"""Trust at the edge: what a node lets into its pool, and how much any one peer may ask of it.

`Admission.admit(raw, peer)` is the single gate for records from the network, whether they came
by gossip or by sync. It decodes, validates and verifies the record, drops records of blocked
keys, caps how many records an unknown key may have stored (pinned keys and our own are never
capped), applies a per-peer token bucket, and stores what passes. It never raises: every
failure becomes a `Verdict`. `PeerLimiter` holds the per-peer buckets for records and sync
requests and counts invalid records per peer so that a peer that keeps sending them can be shut
out for a while.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.signing import SignedRecord, decode_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Knobs of the edge. Defaults suit a handful of records per second across a network."""

    unknown_key_cap: int = 1000  # records stored per unknown author and benchmark
    records_per_s: float = 200.0  # sustained records accepted per peer
    records_burst: int = 2000  # records a peer may send at once
    sync_requests_per_s: float = 20.0  # sync requests served per peer
    sync_burst: int = 200
    invalid_before_ban: int = 20  # invalid records from one peer before it is shut out
    ban_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("unknown_key_cap", "records_burst", "sync_burst", "invalid_before_ban"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProtocolError(f"must be a whole number >= 1, got {value!r}", f"limits.{name}")
        for name in ("records_per_s", "sync_requests_per_s", "ban_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ProtocolError(f"must be a number > 0, got {value!r}", f"limits.{name}")


class Verdict(enum.Enum):
    """What happened to one incoming record. Only ADDED and DUPLICATE may be forwarded."""

    ADDED = "added"
    DUPLICATE = "duplicate"
    INVALID = "invalid"
    WRONG_BENCH = "wrong-bench"
    BLOCKED = "blocked"
    OVER_CAP = "over-cap"
    RATE_LIMITED = "rate-limited"
    ERROR = "error"

    @property
    def accepted(self) -> bool:
        return self in (Verdict.ADDED, Verdict.DUPLICATE)


class TokenBucket:
    """`rate` tokens per second up to `burst`; `take()` spends one if there is one."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self, n: float = 1.0) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


class PeerLimiter:
    """Per-peer record and sync-request buckets, and per-peer invalid-record counts with bans."""

    def __init__(self, limits: Limits, clock=time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._records: dict[str, TokenBucket] = {}
        self._requests: dict[str, TokenBucket] = {}
        self._invalid: dict[str, int] = defaultdict(int)
        self._banned_until: dict[str, float] = {}

    def allow_record(self, peer: str) -> bool:
        bucket = self._records.get(peer)
        if bucket is None:
            bucket = self._records[peer] = TokenBucket(self.limits.records_per_s, self.limits.records_burst, self._clock)
        return bucket.take()

    def allow_request(self, peer: str) -> bool:
        bucket = self._requests.get(peer)
        if bucket is None:
            bucket = self._requests[peer] = TokenBucket(self.limits.sync_requests_per_s, self.limits.sync_burst, self._clock)
        return bucket.take()

    def note_invalid(self, peer: str) -> bool:
        """Count one invalid record from `peer`; True when this one crosses the ban threshold."""
        self._invalid[peer] += 1
        if self._invalid[peer] >= self.limits.invalid_before_ban and peer not in self._banned_until:
            self._banned_until[peer] = self._clock() + self.limits.ban_s
            return True
        return False

    def invalid_count(self, peer: str) -> int:
        return self._invalid.get(peer, 0)

    def is_banned(self, peer: str) -> bool:
        until = self._banned_until.get(peer)
        return until is not None and self._clock() < until

    def expired_bans(self) -> list[str]:
        """Peers whose ban has run out (forgotten here, so the caller can lift them)."""
        now = self._clock()
        done = [p for p, until in self._banned_until.items() if until <= now]
        for peer in done:
            del self._banned_until[peer]
            self._invalid.pop(peer, None)
        return done


class Admission:
    """The gate every record from a peer passes through before it reaches the pool."""

    def __init__(self, store: Any, trust: Any, bench_ids: set[str] | frozenset[str], limits: Limits, *, own_key: str, limiter: PeerLimiter | None = None) -> None:
        self.store = store
        self.trust = trust
        self.bench_ids = frozenset(bench_ids)
        self.limits = limits
        self.own_key = own_key
        self.limiter = limiter or PeerLimiter(limits)
        self.counts: dict[Verdict, int] = {v: 0 for v in Verdict}
        self.on_added = None  # optional callback(record id), e.g. to wake the research loop
        self.on_ban = None  # optional callback(peer id) when a peer crosses the invalid threshold

    def admit(self, raw: bytes, peer: str | None) -> Verdict:
        """Check and store one record that `peer` sent us (None: it came from this process)."""
        try:
            verdict = self._admit(raw, peer)
        except Exception:  # a gate that raises would take the whole node down with it
            log.exception("unexpected error while admitting a record from %s", peer)
            verdict = Verdict.ERROR
        self.counts[verdict] += 1
        return verdict

    def admit_signed(self, signed: SignedRecord) -> Verdict:
        """Store a record this node made itself (already verified): our own key is never capped."""
        try:
            verdict = Verdict.ADDED if self.store.add_signed(signed) else Verdict.DUPLICATE
        except Exception:
            log.exception("cannot store our own record %s", signed.id)
            verdict = Verdict.ERROR
        return verdict

    def admit_batch(self, raws: list[bytes], peer: str | None) -> dict[Verdict, int]:
        """Check and store many records fetched by sync: each is verified once, and all that
        pass are stored in one transaction."""
        return self.admit_decoded(verify_all(raws), peer)

    def admit_decoded(self, decoded: list[SignedRecord | None], peer: str | None) -> dict[Verdict, int]:
        """The second half of `admit_batch`, for records `verify_all` already decoded (None:
        invalid), so that verification can run in worker threads and this part in trio's."""
        tally = {v: 0 for v in Verdict}
        try:
            self._admit_decoded(decoded, peer, tally)
        except Exception:
            log.exception("unexpected error while admitting %d records from %s", len(decoded), peer)
            tally[Verdict.ERROR] += len(decoded) - sum(tally.values())
        for verdict, n in tally.items():
            self.counts[verdict] += n
        return tally

    def _admit_decoded(self, decoded: list[SignedRecord | None], peer: str | None, tally: dict[Verdict, int]) -> None:
        valid = [d for d in decoded if d is not None]
        for _ in range(len(decoded) - len(valid)):
            tally[Verdict.INVALID] += 1
            self._note_invalid(peer)
        lacking = set(self.store.missing([d.id for d in valid]))
        statuses: dict[str, str] = {}
        stored: dict[tuple[str, str], int] = {}
        keep: list[SignedRecord] = []
        for signed in valid:
            if signed.bench not in self.bench_ids:
                tally[Verdict.WRONG_BENCH] += 1
                continue
            author = signed.author
            if author not in statuses:
                statuses[author] = _trust_status(self.trust, author)
            status = statuses[author]
            if status == "blocked":
                tally[Verdict.BLOCKED] += 1
                continue
            if signed.id not in lacking:
                tally[Verdict.DUPLICATE] += 1
                continue
            lacking.discard(signed.id)  # the same record twice in one batch is stored once
            if status not in ("own", "pinned") and author != self.own_key:
                key = (signed.bench, author)
                if key not in stored:
                    stored[key] = self.store.count_by_author(author, signed.bench)
                if stored[key] >= self.limits.unknown_key_cap:
                    tally[Verdict.OVER_CAP] += 1
                    continue
                stored[key] += 1
            keep.append(signed)
        if not keep:
            return
        report = self.store.add_verified(keep)
        tally[Verdict.ADDED] += len(report.added)
        tally[Verdict.DUPLICATE] += len(report.duplicates)
        if self.on_added is not None:
            for rid in report.added:
                self.on_added(rid)

    def _policy(self, signed: SignedRecord) -> Verdict | None:
        """Why a verified record may not be stored (None: it may)."""
        if signed.bench not in self.bench_ids:
            return Verdict.WRONG_BENCH
        status = _trust_status(self.trust, signed.author)
        if status == "blocked":
            return Verdict.BLOCKED
        if self.store.has(signed.id):
            return Verdict.DUPLICATE
        capped = status not in ("own", "pinned") and signed.author != self.own_key
        if capped and self.store.count_by_author(signed.author, signed.bench) >= self.limits.unknown_key_cap:
            return Verdict.OVER_CAP
        return None

    def _note_invalid(self, peer: str | None) -> None:
        if peer is not None and self.limiter.note_invalid(peer) and self.on_ban is not None:
            log.warning("peer %s sent %d invalid records; shutting it out for %.0f s", peer, self.limiter.invalid_count(peer), self.limits.ban_s)
            self.on_ban(peer)

    def _admit(self, raw: bytes, peer: str | None) -> Verdict:
        if peer is not None:
            if self.limiter.is_banned(peer):
                return Verdict.RATE_LIMITED
            if not self.limiter.allow_record(peer):
                return Verdict.RATE_LIMITED
        try:
            signed = decode_record(raw)
        except ProtocolError as exc:
            log.info("invalid record from %s: %s", peer, exc)
            self._note_invalid(peer)
            return Verdict.INVALID
        verdict = self._policy(signed)
        if verdict is not None:
            return verdict
        # Not a durable commit: a peer's record lost to a power cut comes back by sync.
        added = bool(self.store.add_verified([signed]).added)
        if added and self.on_added is not None:
            self.on_added(signed.id)
        return Verdict.ADDED if added else Verdict.DUPLICATE


def verify_all(raws: list[bytes]) -> list[SignedRecord | None]:
    """Decode and verify each envelope (None where invalid). Pure: safe in a worker thread."""
    out: list[SignedRecord | None] = []
    for raw in raws:
        try:
            out.append(decode_record(raw))
        except ProtocolError:
            out.append(None)
    return out


def _trust_status(trust: Any, author: str) -> str:
    """'own', 'pinned', 'blocked' or 'unknown' as a plain string, whatever type the store returns."""
    if trust is None:
        return "unknown"
    status = trust.status(author)
    return str(getattr(status, "value", status))

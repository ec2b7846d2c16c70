"""Running announcements: "this key is training this candidate on this hardware class now".

A small signed message (SPEC.md section 14) that lets peers avoid duplicating a run in
progress. It is not a record: it has its own signing domain, its own gossip topic per benchmark
(`running_topic`), is never stored in the pool, and a record decoder rejects it (kind
`running`), as this decoder rejects records. The envelope is the record envelope (section 2,
at most MAX_RECORD_BYTES), so the same decode bounds and the same bounded author read apply.

Guarantees:
- `decode_announcement` is the only way bytes from a peer become a `SignedAnnouncement`; it
  raises only `ProtocolError`: `NotUsable` (a subclass) for an authentic announcement that is
  simply not for us now (a benchmark we do not serve, expired), plain `ProtocolError` for
  anything malformed or forged (count it against the sender).
- Its window is bounded by the benchmark's budget: expires_ms - started_ms <= budget + EVAL_SLACK_MS,
  so nothing a peer says can occupy a candidate for longer than one run of that benchmark.
- A withdrawal is an announcement with expires_ms == created_ms (newer than the one it ends).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from p2pgolf.protocol import canonical, candidates
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.records import ACCELERATORS, EARLIEST_MS, FUTURE_SKEW_MS, MAX_SHORT_STR, PROTOCOL_VERSION, _exact_map, _hex64, _int
from p2pgolf.protocol.signing import MAX_RECORD_BYTES, open_envelope, seal_envelope, verify_signature

RUNNING_DOMAIN = b"p2pgolf/running/v1\n"
RUNNING_TOPIC_PREFIX = "/p2pgolf/running/1/"
KIND = "running"
EVAL_SLACK_MS = 600_000  # beyond the budget: export, evaluation, start-up (the loop's deadline is budget + 300 s)
WITHDRAWAL_GRACE_MS = 60_000  # an announcement that ended this recently still travels (a withdrawal must)

_KEYS = ("v", "kind", "bench", "author", "hw", "base", "diff", "tokenizer", "created_ms", "started_ms", "expires_ms")
_HW_KEY = re.compile(r"([a-z]+):(.+):x([1-9][0-9]{0,3})", re.S)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class NotUsable(ProtocolError):
    """An authentic, well-formed announcement that is not for this node now (a benchmark it
    does not serve, or expired): dropped, not forwarded, not held against the peer."""


@dataclass(frozen=True)
class RunningAnnouncement:
    """`author` is training (base, diff, tokenizer) on hardware class `hw` (a HardwareClass key,
    `accel:model:xcount`) for benchmark `bench`, since `started_ms`, until at most `expires_ms`."""

    bench: str
    author: str
    hw: str
    base: str
    diff: Mapping[str, Any]
    tokenizer: str
    created_ms: int
    started_ms: int
    expires_ms: int
    kind: str = field(default=KIND, init=False)

    @property
    def candidate(self) -> str:
        """The candidate id (SPEC.md section 4.4) of what is being trained."""
        return candidates.candidate_id(self.base, self.diff, self.tokenizer)

    def live(self, now_ms: int) -> bool:
        """True while the run may still be going: before `expires_ms` (a withdrawal never is)."""
        return now_ms < self.expires_ms

    def withdrawal(self, now_ms: int) -> "RunningAnnouncement":
        """The announcement that ends this one at `now_ms` (newer, expires as it is made)."""
        at = max(int(now_ms), self.created_ms + 1)
        return RunningAnnouncement(self.bench, self.author, self.hw, self.base, self.diff, self.tokenizer, at, self.started_ms, at)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "kind": KIND,
            "bench": self.bench,
            "author": self.author,
            "hw": self.hw,
            "base": self.base,
            "diff": candidates.normalise_diff(self.base, self.diff),
            "tokenizer": self.tokenizer,
            "created_ms": int(self.created_ms),
            "started_ms": int(self.started_ms),
            "expires_ms": int(self.expires_ms),
        }


@dataclass(frozen=True)
class SignedAnnouncement:
    """A verified announcement with its id (hex) and exact wire bytes."""

    id: str
    announcement: RunningAnnouncement
    raw: bytes

    @property
    def author(self) -> str:
        return self.announcement.author

    @property
    def bench(self) -> str:
        return self.announcement.bench


def running_topic(bench_id: str) -> str:
    """The gossipsub topic of benchmark `bench_id`'s running announcements."""
    return RUNNING_TOPIC_PREFIX + _hex64(bench_id, "bench")


def announcement_id(body: bytes) -> bytes:
    """SHA-256(RUNNING_DOMAIN || body): what the signature covers (never a record id)."""
    return hashlib.sha256(RUNNING_DOMAIN + body).digest()


def max_span_ms(budget_s: float) -> int:
    """The longest window (expires_ms - started_ms) an announcement may claim under this budget."""
    return int(round(budget_s * 1000)) + EVAL_SLACK_MS


def sign_announcement(ann: RunningAnnouncement, signing_key: nacl.signing.SigningKey, *, budget_s: float) -> SignedAnnouncement:
    """Encode, check (as a peer would, at its own `created_ms`) and sign `ann`."""
    public_hex = bytes(signing_key.verify_key).hex()
    if ann.author != public_hex:
        raise ProtocolError(f"announcement author {ann.author[:16]}... is not the signing key {public_hex[:16]}...", "author")
    body = canonical.encode(ann.to_wire())
    parse_announcement(canonical.decode(body, max_len=MAX_RECORD_BYTES), budgets={ann.bench: budget_s}, now_ms=ann.created_ms)
    signature = signing_key.sign(announcement_id(body)).signature
    return SignedAnnouncement(announcement_id(body).hex(), ann, seal_envelope(body, signature, "announcement"))


def decode_announcement(raw: bytes, *, budgets: Mapping[str, float], now_ms: int | None = None) -> SignedAnnouncement:
    """Decode, validate and verify an announcement envelope from a peer. `budgets` maps each
    benchmark id this node serves to its budget in seconds. Raises only ProtocolError
    (NotUsable for an authentic one that is not for us now)."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_RECORD_BYTES:
        raise ProtocolError(f"an announcement is at most {MAX_RECORD_BYTES} bytes of binary")
    body, signature = open_envelope(raw)
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    ann = parse_announcement(canonical.decode(body, max_len=MAX_RECORD_BYTES), budgets=None, now_ms=now_ms)
    aid = announcement_id(body)
    verify_signature(ann.author, aid, signature)
    check_window(ann, budgets, now_ms)
    return SignedAnnouncement(aid.hex(), ann, bytes(raw))


def parse_announcement(body: Any, *, budgets: Mapping[str, float] | None, now_ms: int) -> RunningAnnouncement:
    """Validate a decoded body (every field, exact key set); with `budgets`, also its window."""
    if not isinstance(body, dict):
        raise ProtocolError("announcement body must be a map")
    version = body.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(f"unsupported protocol version {version!r}; this node speaks {PROTOCOL_VERSION}", "v")
    if body.get("kind") != KIND:
        raise ProtocolError(f"kind {body.get('kind')!r} is not an announcement; expected {KIND!r}", "kind")
    m = _exact_map(body, _KEYS, "announcement")
    created = _int(m["created_ms"], EARLIEST_MS, now_ms + FUTURE_SKEW_MS, "created_ms")
    started = _int(m["started_ms"], EARLIEST_MS, created, "started_ms")
    expires = _int(m["expires_ms"], created, started + max_span_ms(86400.0), "expires_ms")
    candidates.check_normalised(m["base"], m["diff"])
    ann = RunningAnnouncement(
        bench=_hex64(m["bench"], "bench"),
        author=_hex64(m["author"], "author"),
        hw=check_hw_key(m["hw"]),
        base=m["base"],
        diff=m["diff"],
        tokenizer=candidates.check_tokenizer(m["tokenizer"]),
        created_ms=created,
        started_ms=started,
        expires_ms=expires,
    )
    if budgets is not None:
        check_window(ann, budgets, now_ms)
    return ann


def check_window(ann: RunningAnnouncement, budgets: Mapping[str, float], now_ms: int) -> None:
    """The benchmark's rules: served here (else NotUsable), window within its budget (else
    ProtocolError), not ended more than WITHDRAWAL_GRACE_MS ago (else NotUsable)."""
    budget_s = budgets.get(ann.bench)
    if budget_s is None:
        raise NotUsable(f"benchmark {ann.bench[:12]}... is not served by this node", "bench")
    span = ann.expires_ms - ann.started_ms
    if span > max_span_ms(budget_s):
        raise ProtocolError(f"a window of {span} ms is longer than the benchmark's budget allows ({max_span_ms(budget_s)} ms)", "expires_ms")
    if ann.expires_ms + WITHDRAWAL_GRACE_MS < now_ms:
        raise NotUsable(f"ended {(now_ms - ann.expires_ms) / 1000:.0f} s ago", "expires_ms")


def check_hw_key(value: Any) -> str:
    """A hardware class key `accel:model:xcount` (SPEC.md section 3.3's class key)."""
    if type(value) is not str:
        raise ProtocolError("must be a string", "hw")
    match = _HW_KEY.fullmatch(value)
    if match is None or match.group(1) not in ACCELERATORS:
        raise ProtocolError(f"{value[:100]!r} is not a hardware class key (accel:model:xcount, accel one of {', '.join(ACCELERATORS)})", "hw")
    model, count = match.group(2), int(match.group(3))
    if len(model) > MAX_SHORT_STR or _CONTROL.search(model) or count > 4096:
        raise ProtocolError(f"model of 1-{MAX_SHORT_STR} characters without control characters and count in [1, 4096] expected", "hw")
    return value

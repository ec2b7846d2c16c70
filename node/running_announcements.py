"""What trusted peers are training now: our running announcements out, theirs in (SPEC.md 14).

The research loop announces each run as it starts and withdraws it when it ends; the live
announcements of trusted peers of its hardware class go to the bandit as `running=`, so it
does not propose a candidate a peer is already training (re-measurements stay allowed: the
bandit counts them, pool/bandit.py `confirm_cap`).

Whose announcements count (an announcement can only make us skip a candidate, so a stranger
announcing everything could freeze our exploration): only our own key's and pinned keys'
(`Admission.trusted_keys`, node/limits.py), the keys whose records we already believe as they
stand; a user's other machines are pinned keys. Strangers' valid announcements are forwarded
(gossip must carry them between trusted peers through untrusted ones), never held or used.

Bounds on what a peer can make us hold or do:
- the gossip screen (node/gossip.py, node/limits.py) applies to these messages exactly as to
  records: bans, each peer's pushed rate, and the budget shared by all keys neither own nor
  pinned; then `RunningGate` decodes within the record bounds (16 KiB, canonical msgpack) and
  verifies; an invalid one counts against its peer like an invalid record (and can get it
  shut out);
- each author may have AUTHOR_PER_S announcements a second accepted (bursts of AUTHOR_BURST);
  more are neither used nor forwarded;
- `RunningBoard` holds one announcement per (author, benchmark), the newest, at most MAX_HELD
  in all, only trusted authors'; an expired one is never used, and is forgotten once nothing
  older of its author could still arrive (every window is bounded by the benchmark's budget:
  protocol/running.py);
- the bandit gets at most MAX_BLOCKING candidate ids (the newest), so however many trusted
  keys there are, at most that many arms are skipped in one choice.
Nothing here raises into pubsub: the validator turns every failure into a rejection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from p2pgolf.node.limits import TokenBucket
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.running import (
    NotUsable,
    RunningAnnouncement,
    SignedAnnouncement,
    decode_announcement,
    WITHDRAWAL_GRACE_MS,
    max_span_ms,
    running_topic,
    sign_announcement,
)

log = logging.getLogger(__name__)

MAX_HELD = 256  # announcements held in all (one per trusted author and benchmark)
MAX_BLOCKING = 16  # candidate ids handed to one choice: the most a set of trusted keys can block
AUTHOR_PER_S, AUTHOR_BURST = 1.0, 10  # accepted announcements per author (a loop sends two per run)
MAX_AUTHOR_BUCKETS = 10_000  # keys are free: past this many, forget the buckets rather than grow

HELD, REPLACED, ENDED, OLDER, UNTRUSTED, FULL = "held", "replaced", "ended", "older", "untrusted", "full"


def now_ms() -> int:
    return int(time.time() * 1000)


class RunningBoard:
    """The live announcements of trusted authors: one per (author, benchmark), the newest by
    `created_ms`; a withdrawal (newer, already expired) ends the one it follows. Each entry,
    live or ended, is remembered until nothing older of its author could still be accepted
    (`created_ms` + the benchmark's longest window + the grace), so a replay of an announcement
    after its withdrawal does not bring it back."""

    def __init__(self, is_trusted: Callable[[str], bool], budgets: Mapping[str, float], *, max_held: int = MAX_HELD, clock_ms: Callable[[], int] = now_ms) -> None:
        self.is_trusted = is_trusted
        self.budgets = dict(budgets)
        self.max_held = max_held
        self._clock_ms = clock_ms
        self._held: dict[tuple[str, str], RunningAnnouncement] = {}

    def offer(self, ann: RunningAnnouncement) -> str:
        """Take a verified announcement: HELD (a new author and benchmark), REPLACED (newer
        than the one held), ENDED (a withdrawal, or ended in transit: remembered, not live),
        OLDER (ignored), UNTRUSTED (ignored) or FULL (MAX_HELD live ones held; ignored)."""
        if not self.is_trusted(ann.author):
            return UNTRUSTED
        key = (ann.author, ann.bench)
        now = self._clock_ms()
        current = self._held.get(key)
        if current is not None and current.created_ms >= ann.created_ms:
            return OLDER
        if current is None and len(self._held) >= self.max_held and not self._make_room(now):
            return FULL
        self._held[key] = ann
        if not ann.live(now):
            return ENDED
        return HELD if current is None else REPLACED

    def sweep(self, now: int | None = None) -> None:
        """Forget every entry nothing older of its author could outlive."""
        now = self._clock_ms() if now is None else now
        for key in [k for k, a in self._held.items() if now > self._forget_at(a)]:
            del self._held[key]

    def _forget_at(self, ann: RunningAnnouncement) -> int:
        return ann.created_ms + max_span_ms(self.budgets.get(ann.bench, 86400.0)) + WITHDRAWAL_GRACE_MS

    def _make_room(self, now: int) -> bool:
        self.sweep(now)
        if len(self._held) < self.max_held:
            return True
        ended = [k for k, a in self._held.items() if not a.live(now)]
        if not ended:
            return False
        del self._held[min(ended, key=lambda k: self._held[k].created_ms)]  # the oldest ended one
        return True

    def live(self, bench: str | None = None, hw: str | None = None) -> list[RunningAnnouncement]:
        """Live announcements (of `bench`, of hardware class `hw`) by authors still trusted, newest first."""
        now = self._clock_ms()
        self.sweep(now)
        found = [a for a in self._held.values() if a.live(now) and (bench is None or a.bench == bench) and (hw is None or a.hw == hw) and self.is_trusted(a.author)]
        return sorted(found, key=lambda a: (-a.started_ms, a.author))

    def running_ids(self, bench: str, hw: str, *, exclude_author: str | None = None, limit: int = MAX_BLOCKING) -> list[str]:
        """Candidate ids trusted peers of hardware class `hw` are training now for `bench`, at
        most `limit` (the newest), without `exclude_author`'s (our own run is not a peer's)."""
        ids: list[str] = []
        for ann in self.live(bench, hw):
            if ann.author == exclude_author:
                continue
            try:
                cid = ann.candidate
            except ProtocolError:
                continue
            if cid not in ids:
                ids.append(cid)
            if len(ids) >= limit:
                break
        return ids


class RunningGate:
    """Stages 3-4 for a running announcement a peer pushed (the gossip screen did 1-2): decode
    and verify within the record bounds, the author's rate, then the board. Never raises."""

    def __init__(self, board: RunningBoard, budgets: Mapping[str, float], *, limiter: Any = None, on_ban: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, clock_ms: Callable[[], int] = now_ms) -> None:  # fmt: skip
        self.board = board
        self.budgets = dict(budgets)
        self.limiter = limiter  # node.limits.PeerLimiter: invalid announcements count like invalid records
        self.on_ban = on_ban
        self._clock = clock
        self._clock_ms = clock_ms
        self._authors: dict[str, TokenBucket] = {}
        self.counts: dict[str, int] = {}

    def admit(self, raw: bytes, peer: str | None, bench: str) -> bool:
        """Whether the announcement `raw` that `peer` pushed on `bench`'s topic is valid and
        may be forwarded (held only when its author is trusted)."""
        try:
            return self._admit(raw, peer, bench)
        except Exception:
            log.exception("running announcement check failed; rejecting it")
            self._count("error")
            return False

    def _admit(self, raw: bytes, peer: str | None, bench: str) -> bool:
        try:
            signed = decode_announcement(raw, budgets=self.budgets, now_ms=self._clock_ms())
        except NotUsable as exc:
            log.debug("running announcement from %s not usable: %s", peer, exc)
            self._count("not-usable")
            return False
        except ProtocolError as exc:
            log.debug("invalid running announcement from %s: %s", peer, exc)
            self._count("invalid")
            if peer is not None and self.limiter is not None and self.limiter.note_invalid(peer):
                log.warning("peer %s sent %d invalid records or announcements; shutting it out", peer, self.limiter.invalid_count(peer))
                if self.on_ban is not None:
                    self.on_ban(peer)
            return False
        ann = signed.announcement
        if ann.bench != bench:
            self._count("wrong-topic")
            return False
        if not self._author_bucket(ann.author).take():
            self._count("author-rate")
            return False
        self._count(self.board.offer(ann))
        return True

    def _author_bucket(self, author: str) -> TokenBucket:
        bucket = self._authors.get(author)
        if bucket is None:
            if len(self._authors) >= MAX_AUTHOR_BUCKETS:
                self._authors.clear()
            bucket = self._authors[author] = TokenBucket(AUTHOR_PER_S, AUTHOR_BURST, self._clock)
        return bucket

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1


class RunningAnnouncer:
    """A node's running announcements on gossipsub: one topic per benchmark beside the record
    topics, validated by `RunningGate`; `announce` and `withdraw` publish ours."""

    def __init__(self, pubsub: Any, identity: Any, benches: Mapping[str, float], board: RunningBoard, gate: RunningGate, *, own_peer: Any) -> None:
        self.pubsub = pubsub
        self.identity = identity
        self.budgets = dict(benches)  # bench id -> budget_s
        self.board = board
        self.gate = gate
        self.own_peer = own_peer
        self.topics = {b: running_topic(b) for b in self.budgets}
        self._bench_of = {t: b for b, t in self.topics.items()}
        self.published = 0
        for topic in self.topics.values():
            pubsub.set_topic_validator(topic, self._validate, False)

    @classmethod
    def for_node(cls, node: Any) -> "RunningAnnouncer":
        """The announcer of a node whose gossip is built (node/node.py)."""
        budgets = {b.id: b.budget_s for b in node.options.benches}
        admission = node.admission
        board = RunningBoard(lambda author: author in admission.trusted_keys(), budgets)  # own and pinned keys
        gate = RunningGate(board, budgets, limiter=admission.limiter, on_ban=lambda peer: admission.on_ban(peer) if admission.on_ban else None)
        return cls(node.gossip.pubsub, node.identity, budgets, board, gate, own_peer=node.gossip.own_id)

    async def start(self, nursery: Any) -> None:
        """Subscribe to every benchmark's announcement topic (pubsub must be ready)."""
        for topic in self.topics.values():
            sub = await self.pubsub.subscribe(topic)
            nursery.start_soon(_drain, sub)

    async def announce(self, bench: str, hw: str, base: str, diff: Mapping[str, Any], tokenizer: str, window_s: float) -> SignedAnnouncement:
        """Publish that we train (base, diff, tokenizer) on `hw` for `bench` from now, for at
        most `window_s` (clipped to what the benchmark's budget allows). ProtocolError if it is
        not a valid announcement."""
        start = now_ms()
        span = min(int(window_s * 1000), max_span_ms(self.budgets[bench]))
        ann = RunningAnnouncement(bench, self.identity.public_hex, hw, base, dict(diff), tokenizer, start, start, start + span)
        return await self._publish(ann)

    async def withdraw(self, signed: SignedAnnouncement) -> SignedAnnouncement:
        """Publish the end of the run `signed` announced."""
        return await self._publish(signed.announcement.withdrawal(now_ms()))

    def running(self) -> list[RunningAnnouncement]:
        """What trusted peers run now (every benchmark and class), newest first."""
        return self.board.live()

    async def _publish(self, ann: RunningAnnouncement) -> SignedAnnouncement:
        signed = sign_announcement(ann, self.identity.signing_key, budget_s=self.budgets[ann.bench])
        await self.pubsub.publish(self.topics[ann.bench], signed.raw)
        self.published += 1
        return signed

    def _validate(self, forwarder: Any, msg: Any) -> bool:
        # Runs synchronously inside pubsub: an exception here would end the whole node.
        try:
            if forwarder == self.own_peer:
                return True  # our own publish, signed just now
            topics = list(msg.topicIDs)
            if len(topics) != 1 or topics[0] not in self._bench_of:
                return False
            return self.gate.admit(bytes(msg.data), forwarder.to_base58(), self._bench_of[topics[0]])
        except Exception:
            log.exception("running announcement validator failed; rejecting the message")
            return False


def describe(ann: RunningAnnouncement, now: int | None = None) -> dict[str, Any]:
    """Plain JSON for `status`: who runs what, since when, until when at most."""
    from p2pgolf.protocol.identity import peer_id_from_public_key

    now = now_ms() if now is None else now
    return {
        "author": ann.author,
        "peer_id": peer_id_from_public_key(bytes.fromhex(ann.author)),
        "bench": ann.bench,
        "hw": ann.hw,
        "candidate": ann.candidate,
        "base": ann.base,
        "diff": dict(ann.diff),
        "tokenizer": ann.tokenizer,
        "running_s": round(max(0, now - ann.started_ms) / 1000, 1),
        "expires_in_s": round(max(0, ann.expires_ms - now) / 1000, 1),
    }


async def _drain(subscription: Any) -> None:
    while True:
        await subscription.get()

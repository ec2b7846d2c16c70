"""Gossip: fresh records travel over gossipsub v1.1, one topic per benchmark.

Guarantees:
- Every message from a peer passes the admission path (node/limits.py) in its order: the ban
  and rate stage (`Admission.screen`) as soon as the message is read (in pubsub's read loop,
  before it spawns a task for the message), before py-libp2p checks its pubsub signature (so a
  flood from a peer over its rate, or shut out, costs a lookup per message, not a task and a
  verification), then the rest (`Admission.admit_screened`) inside a synchronous topic
  validator that never raises. Only records the gate accepts (new or already held) are delivered and
  forwarded; invalid, blocked, over-cap and rate-limited ones are neither stored nor forwarded.
  A peer the gate has slowed (it keeps bringing unknown-key records over the budget all peers
  share) is not read from until the slow-down ends, so its flood waits in its own send buffers.
- A peer that keeps sending invalid records is blacklisted for `Limits.ban_s` (which also drops
  its connection): the penalty gossipsub's own scoring cannot yet give in py-libp2p 0.8.1. A peer
  whose connection closes while it is being shut out does not end the node (py-libp2p's own
  teardown raised KeyError there and stopped pubsub).
- A message's id is the SHA-256 of its payload (`content_message_id`), not sender + seqno, so
  a record re-sent with a fresh seqno (or by another sender) is a message already seen and is
  dropped by the pubsub layer for `seen_ttl_s`, before our validator runs; gossipsub's message
  cache (IHAVE/IWANT) uses the same ids.
- A flood of sybil peer ids cannot crowd our trusted peers out of the mesh (py-libp2p 0.8.1 has
  neither gossipsub v1.1's outbound quota D_out nor flood publishing): `kept_peers` (pinned and
  bootstrap peers, peers whose key we pin, and the few that most recently delivered us a new
  record by a trusted key) are never pruned from a mesh or replaced by the library's mesh
  upkeep, and are grafted back at the next heartbeat (after any back-off their own PRUNE set);
  `outbound_in_mesh` peers we dialled ourselves are kept likewise. Our own records go to every
  subscribed peer, not only the mesh (`flood_publish`), so a peer that pruned us still gets them.
  (gossipsub's "direct peers" do not fit: they must be configured on both sides, and a direct
  peer's GRAFT is answered with PRUNE, so pinning one-sidedly would cut the pinned peer's own
  mesh link to us.)
- py-libp2p's silent limits are raised (outbound queue per peer, subscription channel, spam
  protection of 10 messages per topic per second), so bursts are not dropped; the pubsub
  sequence number starts at time.time_ns() so a restarted node's messages are not taken for
  duplicates of its previous life.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pgolf.node.limits import PUSHED, Admission, claimed_author
from p2pgolf.pool.admission import Verdict

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GossipSettings:
    """Mesh shape and timing. Degree 6 (4..12) is gossipsub's usual; 1 s heartbeats heal fast."""

    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_s: float = 1.0
    queue_size: int = 4096  # outbound RPCs per peer and messages per subscription before drops
    seen_ttl_s: int = 600  # a replay within this long is dropped unseen by the validator
    outbound_in_mesh: int = 2  # D_out: mesh members we dialled ourselves, kept through prunes (inbound ids are free)
    flood_publish: bool = True  # our own records go to every subscribed peer, not only the mesh
    deliverers_kept: int = 4  # peers that last delivered us a new record by a trusted key first, kept in the mesh ...
    deliverer_keep_s: float = 600.0  # ... for this long after that record


class Gossip:
    """The gossipsub router and pubsub service of one host, with our validator on every topic."""

    def __init__(self, host: "IHost", admission: Admission, topics: dict[str, str], settings: GossipSettings = GossipSettings()) -> None:
        from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
        from libp2p.pubsub.pubsub import Pubsub

        raise_library_limits(settings.queue_size)
        self.host = host
        self.admission = admission
        self.topics = dict(topics)  # bench id -> topic
        self._bench_of = {t: b for b, t in self.topics.items()}
        self.own_id = host.get_id()
        self.settings = settings
        self._pinned_peers: frozenset[str] = frozenset()  # set by `keep_peers`
        self._deliverers: dict[str, float] = {}  # peer -> when it last delivered us a new record by a trusted key
        self._trusted_ids: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())  # (keys, their peer ids)
        self._kept_ids: tuple[frozenset[str], frozenset[Any]] = (frozenset(), frozenset())  # (peer ids, as libp2p IDs)
        self.router = _keeping_router_class()(
            [PROTOCOL_ID_V11],  # v1.2 sends IDONTWANT for every message and doubles CPU per message
            settings.degree,
            settings.degree_low,
            settings.degree_high,
            heartbeat_interval=settings.heartbeat_s,
            heartbeat_initial_delay=0.1,
            spam_protection_enabled=False,  # per-peer limits live in the admission gate instead
        )
        self.router.kept = self._kept_libp2p_ids
        self.router.outbound = self._is_outbound
        self.router.d_out = settings.outbound_in_mesh
        self.router.flood_publish = settings.flood_publish
        self.pubsub = Pubsub(host, self.router, seen_ttl=settings.seen_ttl_s, msg_id_constructor=content_message_id)
        self.router.mcache = ContentMessageCache(self.router.mcache.window_size, self.router.mcache.history_size)
        self.pubsub.counter = time.time_ns()
        self.received = 0  # messages from peers that reached the validator
        self.published = 0
        self._subscriptions: list[Any] = []
        for topic in self.topics.values():
            self.pubsub.set_topic_validator(topic, self._validate, False)
        self._push_msg = self.pubsub.push_msg
        self.pubsub.push_msg = self._screen_then_push  # pubsub's read loop looks it up per message
        # Screen in the read loop itself, before pubsub spawns a task per message: py-libp2p 0.8.1
        # runs `push_msg` as a managed task whose set-up walks the service's task tree (profiled:
        # ~2 ms each with 250 peers connected). A refused message costs no task.
        self._forwarder: contextvars.ContextVar[Any] = contextvars.ContextVar("gossip_forwarder", default=None)
        self._screened: set[int] = set()  # id() of messages the read loop let through, until pushed
        self._read_stream = self.pubsub.continuously_read_stream
        self.pubsub.continuously_read_stream = self._read_stream_as
        self._is_subscribed = self.pubsub._is_subscribed_to_msg
        self.pubsub._is_subscribed_to_msg = self._subscribed_and_screened
        self.pubsub._teardown_if_connected = functools.partial(_teardown_if_connected, self.pubsub)  # add_to_blacklist runs it

    def services(self) -> list[Any]:
        """The libp2p services to run (pubsub first, then the router), before the host starts."""
        return [self.pubsub, self.router]

    async def start(self, nursery: Any) -> None:
        """Subscribe to every topic; drain the subscriptions in `nursery` (records are stored by the gate)."""
        await self.pubsub.wait_until_ready()
        for topic in self.topics.values():
            sub = await self.pubsub.subscribe(topic)
            self._subscriptions.append(sub)
            nursery.start_soon(_drain, sub)

    async def publish(self, bench_id: str, raw: bytes) -> int:
        """Send a record we already stored to the topic of its benchmark; returns how many
        connected peers are subscribed to that topic (who will get it unless they drop it)."""
        topic = self.topics[bench_id]
        await self.pubsub.publish(topic, raw)
        self.published += 1
        return len(self.pubsub.peer_topics.get(topic, ()))

    def mesh_peers(self) -> set[str]:
        """Peer ids in our gossipsub mesh of any topic (those that carry our records first)."""
        try:
            return {p.to_base58() for peers in self.router.mesh.values() for p in peers}
        except Exception:
            return set()

    def keep_peers(self, peer_ids: Iterable[str]) -> None:
        """Name the peers (pinned and bootstrap) that `kept_peers` always holds, besides trusted keys' peers."""
        self._pinned_peers = frozenset(peer_ids)

    def kept_peers(self) -> frozenset[str]:
        """Peers that neither the mesh nor the connection cap give up for others: those named by
        `keep_peers`, the peers whose key we trust (own or pinned), and the `deliverers_kept`
        that most recently delivered us first a record by a trusted key (a sybil can earn that
        only by relaying a new trusted record, and only so many of them)."""
        keys = self.admission.trusted_keys()
        if keys is not self._trusted_ids[0]:
            self._trusted_ids = (keys, frozenset(_peer_id_of_key(k) for k in keys) - {""})
        now = time.monotonic()
        recent = {p for p, at in self._deliverers.items() if now - at < self.settings.deliverer_keep_s}
        return self._pinned_peers | self._trusted_ids[1] | recent

    def _kept_libp2p_ids(self) -> frozenset[Any]:
        kept = self.kept_peers()
        if kept != self._kept_ids[0]:
            from libp2p.peer.id import ID

            ids = set()
            for peer in kept:
                try:
                    ids.add(ID.from_base58(peer))
                except Exception:
                    pass
            self._kept_ids = (kept, frozenset(ids))
        return self._kept_ids[1]

    def _is_outbound(self, peer_id: Any) -> bool:
        from p2pgolf.node.discovery import is_outbound

        conns = self.host.get_network().connections.get(peer_id)
        conns = conns if isinstance(conns, (list, tuple)) else [conns] if conns is not None else []
        return any(is_outbound(c) for c in conns)

    def _note_delivery(self, raw: bytes, peer: str) -> None:
        """`peer` delivered us `raw`, a record new to our pool: keep it in the mesh a while if a trusted key wrote it."""
        if self.settings.deliverers_kept < 1 or claimed_author(raw) not in self.admission.trusted_keys():
            return
        self._deliverers.pop(peer, None)
        self._deliverers[peer] = time.monotonic()  # newest last
        while len(self._deliverers) > self.settings.deliverers_kept:
            del self._deliverers[next(iter(self._deliverers))]

    def topic_peers(self, bench_id: str) -> list[str]:
        return sorted(p.to_base58() for p in self.pubsub.peer_topics.get(self.topics[bench_id], ()))

    def ban(self, peer: str) -> None:
        """Shut `peer` out of pubsub (and drop its connection) until `lift` is called."""
        from libp2p.peer.id import ID

        try:
            self.pubsub.add_to_blacklist(ID.from_base58(peer))
        except Exception:
            log.exception("cannot blacklist %s", peer)

    def lift(self, peer: str) -> None:
        from libp2p.peer.id import ID

        try:
            self.pubsub.remove_from_blacklist(ID.from_base58(peer))
        except Exception:
            log.exception("cannot lift the blacklist of %s", peer)

    async def _read_stream_as(self, stream: Any) -> None:
        self._forwarder.set(stream.muxed_conn.peer_id)  # this read task's peer, for the screen
        await self._read_stream(_PacedStream(stream, stream.muxed_conn.peer_id.to_base58(), self.admission.limiter))

    def _subscribed_and_screened(self, msg: Any) -> bool:
        """pubsub's per-message check in its read loop, with stages 1-2 of admission after it."""
        if not self._is_subscribed(msg):
            return False
        forwarder = self._forwarder.get()
        if forwarder is None:
            return True  # not in a read loop: `_screen_then_push` screens it
        if not self._screen(forwarder, msg):
            return False
        if len(self._screened) > 100_000:  # messages let through but never pushed (pubsub stopping)
            self._screened.clear()
        self._screened.add(id(msg))
        return True

    def _screen(self, forwarder: Any, msg: Any) -> bool:
        try:
            if forwarder != self.own_id and not self.pubsub._is_msg_seen(msg):
                return bool(self.admission.screen([bytes(msg.data)], forwarder.to_base58(), path=PUSHED))
            return True
        except Exception:
            log.exception("gossip screen failed; dropping the message")
            return False

    async def _screen_then_push(self, forwarder: Any, msg: Any) -> None:
        if id(msg) in self._screened:
            self._screened.discard(id(msg))
        elif not self._screen(forwarder, msg):
            return  # shut out or over its rate: dropped before any verification
        await self._push_msg(forwarder, msg)

    def _validate(self, forwarder: Any, msg: Any) -> bool:
        # Runs synchronously inside pubsub: an exception here would end the whole node.
        try:
            if forwarder == self.own_id:
                return True  # our own publish: the record was stored before it was sent
            self.received += 1
            topics = list(msg.topicIDs)
            if len(topics) != 1 or topics[0] not in self._bench_of:
                return False
            verdict = self.admission.admit_screened(bytes(msg.data), forwarder.to_base58())
            if verdict == Verdict.ADDED:
                self._note_delivery(bytes(msg.data), forwarder.to_base58())
            if not verdict.accepted:
                log.debug("rejected a gossiped record from %s: %s", forwarder, verdict.value)
            return verdict.accepted
        except Exception:
            log.exception("gossip validator failed; rejecting the message")
            return False


def content_message_id(msg: Any) -> bytes:
    """The gossip message id: SHA-256 of the payload (the record's envelope bytes)."""
    return hashlib.sha256(bytes(msg.data)).digest()


@functools.cache
def _content_cache_class() -> type:
    from libp2p.pubsub.mcache import CacheEntry, MessageCache

    class ContentMessageCache(MessageCache):
        """gossipsub's message cache keyed by `content_message_id` (py-libp2p 0.8.1 keys it by
        sender + seqno whatever id function pubsub uses, so IHAVE would name ids pubsub never saw)."""

        def put(self, msg: Any) -> None:
            mid = content_message_id(msg)
            if mid in self.msgs:
                return
            self.msgs[mid] = msg
            self.history[0].append(CacheEntry(mid, msg.topicIDs))

    return ContentMessageCache


def ContentMessageCache(window_size: int, history_size: int) -> Any:  # noqa: N802 (a class made lazily: libp2p is a heavy import)
    return _content_cache_class()(window_size, history_size)


@functools.cache
def _keeping_router_class() -> type:
    from libp2p.pubsub.gossipsub import GossipSub

    class KeepingGossipSub(GossipSub):
        """py-libp2p 0.8.1's GossipSub with two of gossipsub v1.1's defences it lacks: peers
        `kept()` and up to `d_out` outbound peers stay in the mesh whatever the others are (the
        library prunes a mesh over its high degree, and replaces its worst-scoring member, at
        random among equals: 250 sybils on loopback won that draw against a pinned peer), and,
        with `flood_publish`, our own messages go to every subscribed peer; and a forwarding
        whose cost does not grow with every connected peer (`publish`)."""

        kept: Callable[[], frozenset[Any]] = staticmethod(frozenset)
        outbound: Callable[[Any], bool] = staticmethod(lambda peer_id: False)
        d_out = 0
        flood_publish = False

        def _protected(self, topic: str) -> set[Any]:
            mesh = self.mesh.get(topic, set())
            kept = self.kept()
            protected = {p for p in mesh if p in kept}
            outbound_kept = sum(1 for p in protected if self.outbound(p))
            others = sorted((p for p in mesh if p not in protected and self.outbound(p)), key=str)
            protected.update(others[: max(0, self.d_out - outbound_kept)])
            return protected

        def _select_peers_for_pruning(self, topic: str, num_to_prune: int) -> list[Any]:
            protected = self._protected(topic)
            prunable = [p for p in self.mesh.get(topic, ()) if p not in protected]
            num = min(num_to_prune, len(prunable))
            if num <= 0:
                return []
            if self.scorer is None:
                return self.select_from_minus(num, prunable, set())
            return self._score_based_pruning_selection(topic, prunable, num)

        async def _consider_peer_replacement(self, topic: str) -> None:
            # the library replaces the first worst-scoring member; never a protected one
            if self.scorer is not None and self.mesh.get(topic):
                scorer = self.scorer
                worst = min(list(self.mesh[topic]), key=lambda p: scorer.score(p, [topic]))
                if worst in self._protected(topic):
                    return
            await super()._consider_peer_replacement(topic)

        def mesh_heartbeat(self) -> tuple[Any, Any]:
            graft, prune = super().mesh_heartbeat()
            kept = self.kept()
            for topic, mesh in self.mesh.items():
                subscribed = self.pubsub.peer_topics.get(topic) if self.pubsub is not None else None
                if not subscribed:
                    continue
                wanted = [p for p in subscribed if p in kept and p not in mesh]
                short = self.d_out - sum(1 for p in mesh if self.outbound(p))
                if short > 0:
                    wanted += [p for p in sorted(subscribed, key=str) if p not in mesh and p not in kept and self.outbound(p)][:short]
                for peer in wanted:
                    if peer in self.direct_peers or not self._is_gossipsub_peer(peer) or self._check_back_off(peer, topic) or topic in prune.get(peer, ()):
                        continue
                    mesh.add(peer)
                    self._notify_mesh_peer_added(peer, topic)
                    if self.scorer is not None:
                        self.scorer.on_join_mesh(peer, topic)
                    graft[peer].append(topic)
            return graft, prune

        async def publish(self, msg_forwarder: Any, pubsub_msg: Any) -> None:
            """The library's forwarding of a validated message, step for step, except that the
            peers still owed it (connected, but identify or their subscription not yet seen) are
            found by set operations: the library walks every connected peer per message,
            building an ID for each, ~5 ms a message with 250 peers connected (profiled: the
            forwarding of the shared budget's first burst then held the event loop for ~1.5 s)."""
            from libp2p.peer.id import ID
            from libp2p.peer.peerstore import env_to_send_in_RPC
            from libp2p.pubsub.pb import rpc_pb2

            if not self._check_spam_protection(msg_forwarder, pubsub_msg) or not self._check_equivocation(pubsub_msg):
                return
            self.mcache.put(pubsub_msg)
            pubsub = self.pubsub
            if pubsub is None:
                return
            msg_id = pubsub.get_message_id(pubsub_msg)
            origin = ID(pubsub_msg.from_id)
            send_to = list(self._get_peers_to_send(pubsub_msg.topicIDs, msg_forwarder=msg_forwarder, origin=origin, msg_id=msg_id))
            rpc_msg = rpc_pb2.RPC(publish=[pubsub_msg])
            rpc_msg.senderRecord = env_to_send_in_RPC(pubsub.host)[0]
            await self._emit_idontwant_for_message(msg_id, pubsub_msg.topicIDs)
            await self._notify_observers(pubsub_msg.topicIDs, msg_id)
            for peer_id in send_to:
                if peer_id in pubsub.peers and (self.scorer is None or self.scorer.allow_publish(peer_id, list(pubsub_msg.topicIDs))):
                    self.send_rpc(peer_id, rpc_msg)
            skip = {msg_forwarder, origin} | set(self.direct_peers)
            queued: set[Any] = set()
            now = time.time()
            for topic in pubsub_msg.topicIDs:
                subscribed = pubsub.peer_topics.get(topic, set())
                owed = {p for p in subscribed - skip if p not in self.peer_protocol}  # identify pending
                owed |= set(pubsub.peers) - subscribed - skip  # subscription not yet seen
                for peer_id in owed - queued:
                    self._prune_pending_messages(peer_id)
                    self._pending_messages[peer_id].append((now, rpc_msg))
                queued |= owed
            for topic in pubsub_msg.topicIDs:
                self.time_since_last_publish[topic] = int(now)
                self.recent_message_deliveries[topic].append(now)

        def _get_peers_to_send(self, topic_ids: Iterable[str], msg_forwarder: Any, origin: Any, msg_id: bytes | None = None) -> Iterable[Any]:
            topic_ids = list(topic_ids)
            peers = set(super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id))
            if self.flood_publish and self.pubsub is not None and msg_forwarder == self.pubsub.my_id:
                for topic in topic_ids:
                    peers.update(p for p in self.pubsub.peer_topics.get(topic, ()) if self._is_gossipsub_peer(p))
                peers.difference_update((msg_forwarder, origin))
            yield from peers

    return KeepingGossipSub


def _peer_id_of_key(key_hex: str) -> str:
    from p2pgolf.protocol.identity import peer_id_from_public_key

    try:
        return peer_id_from_public_key(bytes.fromhex(key_hex))
    except Exception:
        return ""


def raise_library_limits(queue_size: int) -> None:
    """Lift py-libp2p's silent drop points (module-level in 0.8.1): the per-peer outbound RPC
    queue (32) and the subscription channel (32)."""
    import libp2p.pubsub.pubsub as pubsub_module
    from libp2p.pubsub.rpc_queue import RpcQueue

    pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = max(pubsub_module.SUBSCRIPTION_CHANNEL_SIZE, queue_size)
    current = pubsub_module.RpcQueue
    if getattr(current, "_p2pgolf_size", 0) >= queue_size:
        return

    class RoomyRpcQueue(RpcQueue):
        _p2pgolf_size = queue_size

        def __init__(self, max_size: int = queue_size, **kwargs: Any) -> None:
            super().__init__(max(max_size, queue_size), **kwargs)

    pubsub_module.RpcQueue = RoomyRpcQueue


READ_CHUNK = 64 * 1024  # bytes taken from a peer's pubsub stream at once (a few RPCs)


class _PacedStream:
    """A peer's inbound pubsub stream whose reads first wait while the gate has the peer slowed
    (node/limits.py: it keeps bringing records the shared budget refuses), and are served from
    one buffered read of up to READ_CHUNK bytes: pubsub reads each RPC's length prefix one byte
    at a time, and every read of the stream itself takes yamux's connection lock and may send a
    window update, each a trio checkpoint. With 250 peers flooding, those checkpoints queued
    behind every other task are what delayed a pinned peer's records by seconds. A read for a
    peer the gate has shut out resets the stream instead (pubsub's read loop for it ends).
    Everything else is the stream's own."""

    def __init__(self, stream: Any, peer: str, limiter: Any) -> None:
        self._stream, self._peer, self._limiter = stream, peer, limiter
        self._buffer = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        import trio

        until = self._limiter.slowed_until(self._peer)  # on the node's clock, time.monotonic
        if until is not None:
            await trio.sleep(max(0.0, until - time.monotonic()))
        if self._limiter.is_banned(self._peer):
            # py-libp2p's blacklist resets only our stream to the peer; its stream to us would be
            # read (and each message refused) for as long as it keeps writing: stop reading it.
            from libp2p.network.stream.exceptions import StreamReset

            try:
                await self._stream.reset()
            except Exception:
                pass
            raise StreamReset(f"{self._peer} is shut out")
        if not self._buffer:
            data = await self._stream.read(READ_CHUNK)
            if n is not None and 0 <= n < len(data):
                self._buffer += data[n:]
                return data[:n]
            return data
        take = len(self._buffer) if n is None or n < 0 else min(n, len(self._buffer))
        out = bytes(self._buffer[:take])
        del self._buffer[:take]
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


async def _teardown_if_connected(pubsub: Any, peer_id: Any) -> None:
    """py-libp2p 0.8.1's teardown of a blacklisted peer, without its race: it deletes the peer's
    entry after awaiting the stream's reset, and when the peer's connection closed meanwhile the
    entry is already gone and the KeyError ends the whole pubsub service (the node)."""
    stream = pubsub.peers.get(peer_id)
    if stream is not None:
        try:
            await stream.reset()
        except Exception:
            pass
        pubsub.peers.pop(peer_id, None)
    pubsub._forget_all_subscriptions(peer_id)


async def _drain(subscription: Any) -> None:
    while True:
        await subscription.get()


__all__ = ["Gossip", "GossipSettings", "Verdict", "content_message_id", "raise_library_limits"]

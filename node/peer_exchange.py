"""Peer exchange: nodes learn peers from peers, over libp2p's own Kademlia DHT.

Each node runs py-libp2p's KadDHT (protocol /ipfs/kad/1.0.0, server mode, random walks on) as
a routing table only: peers' provider and value records are dropped, so they cannot store
anything here.
Once a node has any connection (its bootstrap peer), DHT lookups return that peer's neighbours
and every routing-table peer is one dial away. `PeerExchange.run` keeps the node at
`target_degree` direct connections: while it has fewer, it asks the DHT for more peers and
dials some it is not yet connected to, chosen at random from the whole routing table, so the
connections spread over the network instead of all running through the node that introduced
them. Dials go through `Discovery.dial`, which remembers an address only after a connection
over it was made (addresses learned from peers are never persisted untried).

Measured on loopback (10 hosts in one process, all dialling host 0): routing tables were full
(9 of 9) and every host directly connected to all 9 others within 12 s, on the DHT alone.

A cap: every lookup connects to up to 20 peers (Kademlia's k) and peers dial us for theirs, so
without one a node ends up connected to nearly everyone (20-28 connections each in a 30-node
network, which saturated two cores). Above `max_degree` connections the node closes the most
redundant ones down to `target_degree` (node/connection_cap.py: never pinned or bootstrap peers,
nor the peers of keys we pin or that just delivered us a pinned key's record (`kept_peers`),
never a peer in a sync or blob transfer, never a connection younger than its grace period) and
`Discovery.forget`s them, so they are not dialled back at once; Discovery re-dials kept peers
only while the node is below its target. py-libp2p 0.8.1 has a connection pruner of its own
(libp2p.network.connection_pruner, go-libp2p's watermarks), but it never closes a connection
with an open stream, and gossipsub keeps one open to every peer: it would close none of ours.

Fewer walks: a lookup runs only when the routing table holds too few peers to dial, and the
library's own random walks run every `walk_interval_s` (py-libp2p: 120 s) instead.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pgolf.node.address_ranges import address_range
from p2pgolf.node.connection_cap import GRACE_S, Connection, bucket_of, to_trim
from p2pgolf.node.discovery import is_outbound, remote_addr
from p2pgolf.node.host import PeerAddr, parse_peer_addr

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

    from p2pgolf.node.discovery import Discovery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeshSettings:
    """How many direct connections a node keeps, and how eagerly it looks for more."""

    target_degree: int = 8
    max_degree: int = 16  # above this many connections the most redundant are closed, down to the target
    interval_s: float = 3.0  # one round of "enough peers?" this often (with jitter)
    max_interval_s: float = 60.0  # the pause after rounds that found nobody new grows to this
    dials_per_round: int = 4
    lookup_timeout_s: float = 20.0
    cap_interval_s: float = 2.0  # how often the cap is checked
    grace_s: float = GRACE_S  # a connection this young is never closed by the cap
    walk_interval_s: float = 600.0  # the DHT library's own random walks (py-libp2p's default: 120 s)
    min_dialled: int = 3  # connections to peers we dialled ourselves (remembered for restarts)
    verify_after_s: float = 5.0  # an inbound connection this old may be turned into a dialled one

    def __post_init__(self) -> None:
        if self.target_degree < 1:
            raise ValueError(f"target_degree must be at least 1, not {self.target_degree}")
        if self.max_degree < self.target_degree:
            raise ValueError(f"max_degree ({self.max_degree}) must be at least target_degree ({self.target_degree})")


class PeerExchange:
    """The DHT service of one host and the loop that keeps the node's degree up."""

    def __init__(self, host: "IHost", discovery: "Discovery", settings: MeshSettings = MeshSettings(), *, busy: Callable[[str], bool] = lambda peer: False, mesh_peers: Callable[[], set[str]] = set, kept_peers: Callable[[], frozenset[str]] = frozenset) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        self.host = host
        self.discovery = discovery
        self.settings = settings
        self.dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=True, protocol_prefix=TProtocol("/p2pgolf"), enable_providers=False, enable_values=False)
        # In py-libp2p 0.8.1 those two flags only gate config checks; the handler still stores
        # any peer's PUT_VALUE / ADD_PROVIDER in memory. We route peers, we keep nothing for them.
        self.dht.value_store.put_record = _refuse_to_store
        self.dht.provider_store.add_provider = _refuse_to_store
        if self.dht.rt_refresh_manager is not None:  # read by its loop before every periodic walk
            self.dht.rt_refresh_manager.refresh_interval = settings.walk_interval_s
        self.busy = busy  # peer id -> whether it is in a sync or blob transfer with us
        self.mesh_peers = mesh_peers  # peer ids in our gossipsub meshes
        self.kept_peers = kept_peers  # peer ids the cap never closes (node/gossip.py Gossip.kept_peers: pinned keys' peers among them)
        # dials under way count as connections: a node short of one peer does not dial ten
        discovery.wants_more = lambda: self.degree() + discovery.in_flight < self.settings.target_degree
        self.lookups = 0
        self.learned_dials = 0
        self.trimmed = 0

    def services(self) -> list[Any]:
        """The libp2p service to run alongside the host's others."""
        return [self.dht]

    def degree(self) -> int:
        return len(self.host.get_connected_peers())

    def routing_peers(self) -> list[str]:
        """Peer ids in the DHT's routing table (base58)."""
        try:
            return [pid.to_base58() for pid in self.dht.routing_table.get_peer_ids()]
        except Exception:
            return []

    async def run(self) -> None:
        """Until cancelled: keep the degree up (`_grow`) and under the cap (`_cap`)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cap)
            await self._grow()

    async def _grow(self) -> None:
        """Whenever below the target degree, dial peers of the routing table, looking more up
        first when it holds too few. A round that finds nobody new doubles the pause (up to
        `max_interval_s`): a network smaller than the target is not asked again every few
        seconds."""
        own = self.host.get_id().to_base58()
        pause = self.settings.interval_s
        while True:
            await trio.sleep(pause * random.uniform(0.7, 1.3))
            if self.degree() == 0 or self.degree() >= self.settings.target_degree:
                pause = self.settings.interval_s
                continue  # nobody to ask yet, or enough
            await self._add_connected_to_table()
            wanted = min(self.settings.dials_per_round, self.settings.target_degree - self.degree())
            if len(self._candidates(own)) < wanted:
                with trio.move_on_after(self.settings.lookup_timeout_s):
                    try:
                        self.lookups += 1
                        await self.dht.refresh_routing_table()
                    except Exception as exc:  # a failed lookup only means "not this round"
                        log.debug("DHT refresh failed: %s", exc)
            candidates = self._candidates(own)
            wanted = min(self.settings.dials_per_round, self.settings.target_degree - self.degree())
            pause = self.settings.interval_s if candidates else min(pause * 2, self.settings.max_interval_s)
            async with trio.open_nursery() as nursery:
                for peer in candidates[:max(wanted, 0)]:
                    nursery.start_soon(self._dial_any, peer)

    def _candidates(self, own: str) -> list[str]:
        """Routing-table peers we are not connected to, shuffled; those we trimmed lately last
        (dialled only when nobody else is left: that is cheaper than a lookup)."""
        connected = {p.to_base58() for p in self.host.get_connected_peers()}
        out = [p for p in self.routing_peers() if p not in connected and p != own]
        random.shuffle(out)
        return sorted(out, key=self.discovery.is_forgotten)

    async def _cap(self) -> None:
        while True:
            await trio.sleep(self.settings.cap_interval_s * random.uniform(0.8, 1.2))
            await self.trim()
            await self.verify_inbound()

    async def verify_inbound(self) -> str | None:
        """While fewer than `min_dialled` connections are to peers this node dialled itself,
        turn one inbound connection into a dialled one: close it and dial the address the peer
        advertises (only when the connection comes from that address's IP: a peer behind NAT
        is left connected). A node that others found first (all its connections inbound) would
        otherwise remember no peer but its bootstrap (only addresses a dial of ours reached are
        remembered), and a restart with a dead bootstrap peer would find nobody. Returns the
        peer redialled, if any (at most one a call)."""
        from libp2p.peer.id import ID

        d = self.discovery
        dialled = [p for p in d.known if p not in d.pinned and d.is_connected(p)]
        if len(dialled) >= self.settings.min_dialled:
            return None
        for conn in self.connections():
            if conn.protected or conn.outbound or conn.age_s < self.settings.verify_after_s or conn.peer_id in d.known or d.is_forgotten(conn.peer_id):
                continue
            addr = d.advertised_addr(conn.peer_id)
            if addr is None or not self._reached_at_its_own_ip(conn.peer_id, addr):
                continue
            try:
                with trio.move_on_after(5):
                    await self.host.disconnect(ID.from_base58(conn.peer_id))
            except Exception as exc:
                log.debug("cannot close the connection to %s: %s", conn.peer_id, exc)
            if await d.dial(addr):
                d.probation.pop(conn.peer_id, None)
                d.add(addr)
            else:
                d.forget(conn.peer_id)  # it does not listen where it says (NAT): not tried again soon
            return conn.peer_id
        return None

    def _reached_at_its_own_ip(self, peer_id: str, addr: PeerAddr) -> bool:
        """Whether the inbound connection comes from the IP the peer advertises. If not, a NAT
        (or a relay) sits between: its advertised address cannot be dialled from here, and
        closing the connection to try would only cut off a node that relies on us (a relay's
        clients are all inbound)."""
        from libp2p.peer.id import ID

        from p2pgolf.node.discovery import remote_addr

        conns = self.host.get_network().connections.get(ID.from_base58(peer_id))
        conns = conns if isinstance(conns, (list, tuple)) else [conns] if conns else []
        remote = remote_addr(conns[0]) if conns else None
        parts = addr.addr.split("/")
        return remote is not None and len(parts) > 2 and remote.split("/")[2] == parts[2]

    async def trim(self) -> list[str]:
        """Above `max_degree` connections, close the most redundant down to `target_degree`
        (node/connection_cap.py) and forget them (Discovery.forget); returns the peers closed."""
        from libp2p.peer.id import ID

        chosen = to_trim(self.connections(), target=self.settings.target_degree, cap=self.settings.max_degree, grace_s=self.settings.grace_s)
        for peer in chosen:
            self.discovery.forget(peer)
            try:
                with trio.move_on_after(5):
                    await self.host.disconnect(ID.from_base58(peer))
            except Exception as exc:
                log.debug("cannot close the connection to %s: %s", peer, exc)
        if chosen:
            self.trimmed += len(chosen)
            log.info("over the cap of %d connections: closed %d (%s)", self.settings.max_degree, len(chosen), ", ".join(p[-8:] for p in chosen))
        return chosen

    def connections(self) -> list[Connection]:
        """What the cap knows of each connected peer."""
        own = self.host.get_id().to_base58()
        mesh = self.mesh_peers()
        kept = self.kept_peers()
        now = time.time()
        out = []
        for pid, conns in list(self.host.get_network().connections.items()):
            conns = conns if isinstance(conns, (list, tuple)) else [conns]
            if not conns:
                continue
            key = pid.to_base58()
            created = min((getattr(c, "_created_at", now) for c in conns), default=now)
            outbound = any(is_outbound(c) for c in conns)
            remote = remote_addr(conns[0])
            protected = key in self.discovery.pinned or key in kept or self.busy(key) or _transferring(conns)
            out.append(Connection(key, now - created, protected, outbound, key in mesh, address_range(remote) if remote else None, bucket_of(own, key)))
        return out

    async def _add_connected_to_table(self) -> None:
        """Connected peers that speak the DHT go into the routing table (the library adds them
        only after its first random walk, which can be minutes away)."""
        table = set(self.routing_peers())
        for pid in self.host.get_connected_peers():
            if pid.to_base58() in table:
                continue
            try:
                with trio.move_on_after(5):
                    await self.dht.add_peer(pid)
            except Exception as exc:
                log.debug("cannot add %s to the routing table: %s", pid, exc)

    async def _dial_any(self, peer_id: str) -> None:
        """Dial `peer_id` at each TCP address the peerstore has for it until one works."""
        for addr in self._addrs(peer_id):
            if self.degree() >= self.settings.target_degree:
                return  # others dialled us meanwhile
            self.learned_dials += 1
            if await self.discovery.dial(addr):
                self.discovery.add(addr)  # kept (re-dialled) from now on, like any known peer
                return

    def _addrs(self, peer_id: str) -> list[PeerAddr]:
        from libp2p.peer.id import ID

        try:
            addrs = self.host.get_peerstore().addrs(ID.from_base58(peer_id))
        except Exception:
            return []
        out = []
        for addr in addrs:
            text = str(addr)
            if "/tcp/" not in text or "/p2p-circuit" in text:
                continue
            if "/p2p/" not in text:
                text = f"{text}/p2p/{peer_id}"
            try:
                out.append(parse_peer_addr(text))
            except Exception:
                continue
        return out


BUSY_PROTOCOLS = ("/p2pgolf/sync/", "/p2pgolf/blobs/")  # a stream of these open: a sync or transfer


def _transferring(conns: list[Any]) -> bool:
    """Whether a sync or blob stream is open on one of these connections (either side's)."""
    for conn in conns:
        try:
            streams = conn.get_streams()
        except Exception:
            continue
        for stream in streams:
            try:
                protocol = str(stream.get_protocol() or "")
            except Exception:
                continue
            if protocol.startswith(BUSY_PROTOCOLS):
                return True
    return False


def _refuse_to_store(key: bytes, value: Any) -> None:
    log.debug("dropped a DHT record for %s from a peer: this node keeps none", key.hex()[:16] if isinstance(key, bytes) else key)

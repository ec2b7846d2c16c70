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
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from p2pgolf.node.host import PeerAddr, parse_peer_addr

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

    from p2pgolf.node.discovery import Discovery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeshSettings:
    """How many direct connections a node keeps, and how eagerly it looks for more."""

    target_degree: int = 8
    interval_s: float = 3.0  # one round of "enough peers?" this often (with jitter)
    max_interval_s: float = 60.0  # the pause after rounds that found nobody new grows to this
    dials_per_round: int = 4
    lookup_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.target_degree < 1:
            raise ValueError(f"target_degree must be at least 1, not {self.target_degree}")


class PeerExchange:
    """The DHT service of one host and the loop that keeps the node's degree up."""

    def __init__(self, host: "IHost", discovery: "Discovery", settings: MeshSettings = MeshSettings()) -> None:
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
        self.lookups = 0
        self.learned_dials = 0

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
        """Until cancelled: whenever below the target degree, look up and dial more peers. A
        round that finds nobody new doubles the pause (up to `max_interval_s`): a network smaller
        than the target is not asked again every few seconds."""
        own = self.host.get_id().to_base58()
        pause = self.settings.interval_s
        while True:
            await trio.sleep(pause * random.uniform(0.7, 1.3))
            if self.degree() == 0 or self.degree() >= self.settings.target_degree:
                pause = self.settings.interval_s
                continue  # nobody to ask yet, or enough
            await self._add_connected_to_table()
            with trio.move_on_after(self.settings.lookup_timeout_s):
                try:
                    self.lookups += 1
                    await self.dht.refresh_routing_table()
                except Exception as exc:  # a failed lookup only means "not this round"
                    log.debug("DHT refresh failed: %s", exc)
            connected = {p.to_base58() for p in self.host.get_connected_peers()}
            candidates = [p for p in self.routing_peers() if p not in connected and p != own]
            random.shuffle(candidates)
            wanted = min(self.settings.dials_per_round, self.settings.target_degree - len(connected))
            pause = self.settings.interval_s if candidates else min(pause * 2, self.settings.max_interval_s)
            async with trio.open_nursery() as nursery:
                for peer in candidates[:max(wanted, 0)]:
                    nursery.start_soon(self._dial_any, peer)

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


def _refuse_to_store(key: bytes, value: Any) -> None:
    log.debug("dropped a DHT record for %s from a peer: this node keeps none", key.hex()[:16] if isinstance(key, bytes) else key)

"""Circuit relay v2 and hole punching (DCUtR), with libp2p's own protocols.

- Relay service: a node that AutoNAT found reachable serves as a circuit relay v2
  (/libp2p/circuit/relay/0.2.0/hop) within `RelaySettings` limits (reservations, circuits per
  reservation, bytes and seconds per circuit), unless the user turned it off. A node that is not
  reachable never serves (its clients could not reach it either).
- Relay client: a node that AutoNAT found unreachable reserves a slot on up to
  `RelaySettings.reservations` directly connected peers that serve, and keeps each reservation
  fresh; its relay addresses (`/ip4/R/tcp/P/p2p/RELAY/p2p-circuit/p2p/SELF`) are then among the
  addresses it advertises (identify, the DHT) and prints.
- Every node accepts relayed connections (/libp2p/circuit/relay/0.2.0/stop). While it has fewer
  than `max_peers` connections it dials known peers it is not connected to through a relay (the
  relay addresses they advertise, else the relays it holds a reservation on), a few at a time
  with a back-off per peer: libp2p's swarm skips /p2p-circuit addresses, so this dial is ours.
- DCUtR (/libp2p/dcutr): the library's service upgrades each relayed connection to a direct
  one where the two NATs allow (it dials from the listen port, so a NAT that keeps ports maps it
  to the address the peer was told); the relayed connection is closed once a direct one works.

libp2p is imported inside functions, as everywhere in node/.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any, Callable

import trio

from p2pgolf.node.reachability import direct_peers, is_relayed
from p2pgolf.node.relay_settings import RelaySettings

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

log = logging.getLogger(__name__)

LOOP_S = 1.0
RESERVE_TIMEOUT_S = 10.0
RELAYED_DIAL_TIMEOUT_S = 15.0
RELAYED_DIALS_PER_ROUND = 4
MAX_RELAYED_PEERS = 8  # no more relayed dials while this many peers are reached only through a relay
RETRY_PEER_S = 30.0  # a peer whose relayed dial failed is dialled again this much later
RETRY_RESERVE_S = 2.0  # a relay that refused a reservation is asked again this much later (a slot may free up)
RETRY_NOT_RELAY_S = 30.0  # a peer that does not serve as a relay, unless it starts to (identify says so)
REFRESH_BEFORE_S = 120.0  # a reservation is renewed when it has this long left


class Relay:
    """The relay service, the relay client and DCUtR of one host."""

    def __init__(self, host: "IHost", settings: RelaySettings, reachability: Callable[[], str], *, max_peers: int = 8) -> None:
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport

        self.host = host
        self.settings = settings
        self.reachability = reachability
        self.max_peers = max_peers  # no relayed dials at this many connections (the mesh's target degree)
        limits = settings.limits()
        # allow_hop=False: the hop handler is set (and removed) by `run` as reachability changes.
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=False)
        self.transport = CircuitV2Transport(host, self.protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT, limits=limits))
        self.dcutr: Any = None
        if settings.hole_punch:
            from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

            self.dcutr = DCUtRProtocol(host)
        self.serving = False
        self.reserved: dict[str, tuple[str, float]] = {}  # relay peer id -> (its base address, expiry, unix s)
        self.relayed_dials = 0
        self.met_through_relay: set[str] = set()  # peers we have had a relayed connection with
        self._retry_at: dict[str, float] = {}
        self._not_relay: set[str] = set()  # peers that refused a reservation without serving hop
        self._new_conns: list[Any] = []  # connections opened since the last look (a relayed one may be gone by then)
        host.get_network().register_notifee(_connection_collector(self._new_conns))

    def services(self) -> list[Any]:
        return [self.protocol, *([self.dcutr] if self.dcutr is not None else [])]

    def relay_bases(self) -> list[str]:
        """/ip4/R/tcp/P/p2p/RELAY of each relay holding a live reservation for us."""
        now = time.time()
        return [base for base, expires in self.reserved.values() if expires > now]

    def circuit_addrs(self, candidates: list[Any]) -> list[Any]:
        """libp2p AddrsFactory: the host's own addresses, then its relay addresses."""
        import multiaddr

        return [*candidates, *(multiaddr.Multiaddr(f"{b}/p2p-circuit") for b in self.relay_bases())]

    def upgraded(self) -> list[str]:
        """Peers we had a relayed connection with and now reach directly (DCUtR's work: behind
        NATs nothing else gets a direct connection)."""
        out = []
        for peer in sorted(self.met_through_relay):
            from libp2p.peer.id import ID

            conns = self._conns(ID.from_base58(peer))
            if any(not is_relayed(c) for c in conns):
                out.append(peer)
        return out

    def relayed_only(self) -> list[str]:
        """Connected peers reached only through a relay (not, or not yet, hole-punched)."""
        return sorted(p.to_base58() for p in self.host.get_connected_peers() if self._only_relayed(p))

    async def run(self) -> None:
        """Until cancelled: serve when reachable, reserve when not, dial relayed-only peers."""
        while True:
            self._note_relayed()
            status = self.reachability()
            await self._serve(status == "public" and self.settings.service)
            if status == "private":
                await self._reserve()
            await self._dial_relayed()
            await trio.sleep(LOOP_S)

    async def _serve(self, on: bool) -> None:
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

        if on == self.serving:
            return
        if on:
            self.host.set_stream_handler(PROTOCOL_ID, self.protocol._handle_hop_stream)
            log.info("serving as a circuit relay (%d reservations, %d circuits each)", self.settings.max_reservations, self.settings.max_circuits)
        else:
            self.host.remove_stream_handler(PROTOCOL_ID)
        self.serving = on
        await self._announce()  # peers learn (identify's protocol list) that we do or do not relay

    def _serves_hop(self, pid: Any) -> bool:
        """Whether identify told us `pid` speaks the relay's hop protocol."""
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

        try:
            return PROTOCOL_ID in self.host.get_peerstore().get_protocols(pid)
        except Exception:
            return False

    async def _reserve(self) -> None:
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

        now = time.time()
        connected = {pid.to_base58(): pid for pid in direct_peers(self.host)}
        self.reserved = {r: v for r, v in self.reserved.items() if r in connected}
        due = [r for r, (_, expires) in self.reserved.items() if expires - now < REFRESH_BEFORE_S]
        fresh = [p for p in connected if p not in self.reserved and (self._retry_at.get(p, 0) <= now or (p in self._not_relay and self._serves_hop(connected[p])))]
        random.shuffle(fresh)
        wanted = max(self.settings.reservations - len(self.reserved), 0)
        for peer in [*due, *fresh[:wanted]]:
            pid = connected[peer]
            base = self._base_addr(pid)
            if base is None:
                continue
            stream = None
            ok = False
            try:
                with trio.move_on_after(RESERVE_TIMEOUT_S):
                    stream = await self.host.new_stream(pid, [PROTOCOL_ID])
                    ok = await self.transport._make_reservation(stream, pid)
            except Exception as exc:  # not a relay (no hop protocol), or it refused
                log.debug("no reservation on %s: %s", peer, exc)
            finally:
                if stream is not None:
                    with trio.move_on_after(2):
                        try:
                            await stream.close()
                        except Exception:
                            pass
            expires = float(self.transport._reservations.get(pid, 0))
            if ok and expires > now:
                new = peer not in self.reserved
                self.reserved[peer] = (base, expires)
                if new:
                    log.info("reserved a relay slot on %s until %s", base, time.strftime("%H:%M:%S", time.localtime(expires)))
                    await self._announce()
            else:
                self.reserved.pop(peer, None)
                relay = self._serves_hop(pid)
                self._retry_at[peer] = now + (RETRY_RESERVE_S if relay else RETRY_NOT_RELAY_S)
                if relay:
                    self._not_relay.discard(peer)
                else:
                    self._not_relay.add(peer)

    async def _announce(self) -> None:
        """Tell connected peers our new addresses now (identify push) rather than at their next
        identify, so the relay and the DHT hand out the relay address at once."""
        push = getattr(self.host, "_push_identify_to_all_peers", None)
        if push is None:
            return
        with trio.move_on_after(RESERVE_TIMEOUT_S):
            try:
                await push()
            except Exception as exc:
                log.debug("identify push failed: %s", exc)

    def _base_addr(self, pid: Any) -> str | None:
        """/ip4/IP/tcp/PORT/p2p/PEER of a peer we dialled directly (the address we reached it at)."""
        for conn in self._conns(pid):
            if is_relayed(conn):
                continue
            try:
                ip, port = conn.muxed_conn.get_remote_address()
            except Exception:
                continue
            family = "ip6" if ":" in ip else "ip4"
            return f"/{family}/{ip}/tcp/{port}/p2p/{pid.to_base58()}"
        return None

    async def _dial_relayed(self) -> None:
        """Dial, through a relay, known peers we are not connected to (a few per round, each
        at most every RETRY_PEER_S): at the relay addresses they advertise, else through each
        relay holding a reservation for us (a peer behind a NAT usually reserved on the same
        relays; one that did not is refused by the relay at once)."""
        import multiaddr

        own = self.host.get_id()
        connected = set(self.host.get_connected_peers())
        if len(connected) >= self.max_peers or len([p for p in connected if self._only_relayed(p)]) >= MAX_RELAYED_PEERS:
            return
        ours = [_relay_of(f"{b}/p2p-circuit") for b in self.relay_bases()]
        now = time.time()
        targets = []
        for pid in self.host.get_peerstore().peers_with_addrs():
            if pid == own or pid in connected or pid in ours or self._retry_at.get(pid.to_base58(), 0) > now:
                continue
            advertised = [str(a).split("/p2p-circuit")[0] for a in self.host.get_peerstore().addrs(pid) if "/p2p-circuit" in str(a)]
            via = [a for a in advertised if _relay_of(f"{a}/p2p-circuit") in connected] or [f"/p2p/{r.to_base58()}" for r in ours if r in connected]
            if via:
                targets.append((pid, via))
        random.shuffle(targets)

        async def dial(pid: Any, via: list[str]) -> None:
            self._retry_at[pid.to_base58()] = time.time() + RETRY_PEER_S
            for relay in via:
                text = f"{relay}/p2p-circuit/p2p/{pid.to_base58()}"
                self.relayed_dials += 1
                try:
                    with trio.fail_after(RELAYED_DIAL_TIMEOUT_S):
                        await self.transport.dial(multiaddr.Multiaddr(text))
                except Exception as exc:
                    log.debug("relayed dial to %s failed: %s", text, exc)
                    continue
                self.met_through_relay.add(pid.to_base58())
                log.info("connected to %s through relay %s", pid.to_base58(), relay)
                return

        async with trio.open_nursery() as nursery:
            for pid, via in targets[:RELAYED_DIALS_PER_ROUND]:
                nursery.start_soon(dial, pid, via)

    def _note_relayed(self) -> None:
        """Remember the peers of relayed connections opened since the last look. Looked at a
        moment later, not when opened: an inbound relayed connection is tagged as relayed only
        after libp2p has announced it."""
        new, self._new_conns[:] = list(self._new_conns), []
        for conn in new:
            if is_relayed(conn):
                try:
                    self.met_through_relay.add(conn.muxed_conn.peer_id.to_base58())
                except Exception:
                    continue

    def _only_relayed(self, pid: Any) -> bool:
        conns = self._conns(pid)
        return bool(conns) and all(is_relayed(c) for c in conns)

    def _conns(self, pid: Any) -> list[Any]:
        conns = self.host.get_network().connections.get(pid, [])
        return conns if isinstance(conns, list) else [conns]


def _connection_collector(sink: list[Any]) -> Any:
    """A libp2p notifee appending every new connection to `sink` (bounded: the oldest go)."""
    from p2pgolf.node.connection_notifee import connection_notifee

    def collect(conn: Any) -> None:
        sink.append(conn)
        del sink[:-256]

    return connection_notifee(collect)


def _relay_of(addr: Any) -> Any:
    """The relay's libp2p ID in a /.../p2p/RELAY/p2p-circuit[/p2p/DEST] address (None if absent)."""
    from libp2p.peer.id import ID

    head = str(addr).split("/p2p-circuit")[0]
    if "/p2p/" not in head:
        return None
    try:
        return ID.from_base58(head.rsplit("/p2p/", 1)[1])
    except Exception:
        return None

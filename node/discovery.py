"""Discovery: stay connected to the peers we know, and learn new ones.

Sources: bootstrap multiaddrs (command line and config.toml), peers remembered from earlier runs,
peers that dialled us and stayed, and (behind a flag) peers found by mDNS on the LAN. Each known
peer has one keeper task that re-dials it with exponential back-off (1 s doubling to 60 s, with
jitter) whenever it is not connected, so a dropped peer comes back by itself. Every dial has a
timeout. Peers we reach are handed to `on_connected` (the node remembers them and syncs).

What a stranger cannot do with it (ids are free, an inbound peer says what it likes):
- Pinned peers (bootstrap and known_peers.toml's `pinned`) are kept for ever and never count
  against a bound. Any other kept peer is dropped after GIVE_UP_AFTER dials in a row fail.
- The kept peers other than pinned ones are at most MAX_KEPT, and at most PER_RANGE per
  address range (node/address_ranges.py: an IPv4 /24, an IPv6 /48); `add` refuses the rest.
- A peer we are connected to over a connection of our own (a DHT lookup dials the peers it
  queries) is kept and remembered at the address that connection reached: our socket reached
  it and the handshake proved the peer id, as with our own dials.
- An inbound peer's advertised address is only a candidate (at most MAX_PROBATION of them):
  never dialled while the peer is connected, never handed to `on_connected` (so never
  persisted) until a dial of ours to it has worked. When the peer drops, that address is
  tried at most PROBE_DIALS times; if none works it is forgotten.
A peer the user named (`warn_unreachable`: the --bootstrap and config.toml addresses) that
does not answer its first dial gets one WARNING line (address and reason) and is retried; a
later success is logged once at WARNING too, so the user sees the problem end.

With a connection cap (node/peer_exchange.py sets `wants_more`), a kept peer that is not
connected is re-dialled only while the node wants more connections, and a pinned one also once
every PINNED_REDIAL_S otherwise: a node at its target degree does not dial back every peer that
closed a connection. The back-off is reset only by a connection that lasted STABLE_AFTER_S, so a
peer that keeps closing our connections (its own cap) is dialled ever more rarely.
`forget(peer_id)` stops keeping a peer (the cap trimmed it): it is not dialled again, adopted
as inbound or kept by `add` for FORGET_S.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from p2pgolf.node.address_ranges import PER_RANGE, address_range
from p2pgolf.node.host import PeerAddr, parse_peer_addr, peer_info

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

log = logging.getLogger(__name__)

DIAL_TIMEOUT_S = 10.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
WATCH_INTERVAL_S = 1.0
INBOUND_KEEP_AFTER_S = 30.0  # an inbound peer connected this long is re-dialled if it drops
PROBE_DIALS = 3  # tries of an inbound peer's advertised address once it dropped
GIVE_UP_AFTER = 8  # failed dials in a row after which a peer not pinned is no longer kept (~4 min)
MAX_KEPT = 128  # kept peers besides pinned ones
MAX_PROBATION = 64  # inbound peers' addresses waiting to be tried
STABLE_AFTER_S = 30.0  # a connection that lasted this long resets its peer's dial back-off
PINNED_REDIAL_S = 300.0  # a pinned peer's re-dial while the node does not want more connections
MAX_ALTERNATES = 7  # further addresses kept per pinned peer (a share string carries at most 8)
FORGET_S = 600.0  # a forgotten (trimmed) peer is not dialled, adopted or kept for this long


class Discovery:
    """Keeps a set of peers dialled; runs in the node's nursery until cancelled."""

    def __init__(self, host: "IHost", *, on_connected: Callable[[PeerAddr], None] | None = None, use_mdns_peerstore: bool = False, warn_unreachable: frozenset[str] = frozenset(), pinned: frozenset[str] = frozenset()) -> None:
        self.host = host
        self.warn_unreachable = warn_unreachable  # peer ids whose failed dials the user must hear of
        self.pinned = pinned | warn_unreachable  # peer ids kept for ever, outside every bound
        self.probation: dict[str, PeerAddr] = {}  # inbound peers' advertised addresses, untried
        self._probing: set[str] = set()
        self._warned: set[str] = set()
        self.last_error: dict[str, str] = {}
        self.on_connected = on_connected
        self.use_mdns_peerstore = use_mdns_peerstore
        self.own_id = host.get_id().to_base58()
        self.known: dict[str, PeerAddr] = {}
        self.alternates: dict[str, list[PeerAddr]] = {}  # further addresses of kept pinned peers
        self.dials = 0
        self.failed_dials = 0
        self.in_flight = 0  # dials under way
        self._nursery: Any = None
        self._inbound_since: dict[str, float] = {}
        self._forgotten: dict[str, float] = {}  # peer id -> time.monotonic() until which it stays forgotten
        # Whether the node wants more connections (the cap's owner sets it); kept peers that are
        # not connected are re-dialled only while it says so (pinned ones also now and then).
        self.wants_more: Callable[[], bool] = lambda: True

    def add(self, peer: PeerAddr) -> bool:
        """Keep `peer` connected from now on; False (and nothing kept) for ourselves, a peer
        already kept (a pinned peer's further address is kept as an alternate, True), a peer
        forgotten less than FORGET_S ago, or one over MAX_KEPT or over PER_RANGE in its address
        range (pinned peers are never refused)."""
        if peer.peer_id == self.own_id:
            return False
        if peer.peer_id in self.known:
            # Another address of a kept peer (a share string carries several): its keeper
            # tries them in turn. Only the user's own (pinned) peers get more than one.
            others = self.alternates.setdefault(peer.peer_id, [])
            if peer.peer_id in self.pinned and peer.addr != self.known[peer.peer_id].addr and peer not in others and len(others) < MAX_ALTERNATES:
                others.append(peer)
                return True
            return False
        if self.is_forgotten(peer.peer_id) and peer.peer_id not in self.pinned:
            return False
        if peer.peer_id not in self.pinned and not self._room_for(peer):
            log.debug("not keeping %s: bound of kept peers (per address range or in all) reached", peer.addr)
            return False
        self.known[peer.peer_id] = peer
        if self._nursery is not None:
            self._nursery.start_soon(self._keep, peer)
        return True

    def forget(self, peer_id: str, for_s: float = FORGET_S) -> bool:
        """Stop keeping `peer_id` (its keeper ends, its inbound address is dropped) and refuse to
        dial, adopt or keep it for `for_s` seconds. Pinned peers are never forgotten: False."""
        if peer_id in self.pinned:
            return False
        self.known.pop(peer_id, None)
        self.probation.pop(peer_id, None)
        self._inbound_since.pop(peer_id, None)
        self._forgotten[peer_id] = _now() + for_s
        return True

    def is_forgotten(self, peer_id: str) -> bool:
        until = self._forgotten.get(peer_id)
        if until is None:
            return False
        if _now() >= until:
            del self._forgotten[peer_id]
            return False
        return True

    def _room_for(self, peer: PeerAddr) -> bool:
        learned = [p for p in self.known.values() if p.peer_id not in self.pinned]
        if len(learned) >= MAX_KEPT:
            return False
        key = address_range(peer.addr)
        return key is None or sum(address_range(p.addr) == key for p in learned) < PER_RANGE

    async def run(self, initial: list[str], *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Dial `initial` (multiaddr strings; bad ones are logged and skipped) and keep them."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for peer in list(self.known.values()):
                nursery.start_soon(self._keep, peer)
            for text in initial:
                try:
                    self.add(parse_peer_addr(text))
                except Exception as exc:
                    log.warning("skipping peer address %s: %s", text, exc)
            nursery.start_soon(self._watch)
            task_status.started()

    def is_connected(self, peer_id: str) -> bool:
        from libp2p.peer.id import ID

        try:
            conns = self.host.get_network().connections.get(ID.from_base58(peer_id))
        except Exception:
            return False
        return bool(conns)

    async def dial(self, peer: PeerAddr) -> bool:
        """One dial attempt with a timeout; True if connected."""
        from libp2p.peer.id import ID

        self.dials += 1
        self.in_flight += 1  # before any await: a keeper deciding to dial sees the others'
        try:
            return await self._dial(peer)
        finally:
            self.in_flight -= 1

    async def _dial(self, peer: PeerAddr) -> bool:
        from libp2p.peer.id import ID

        network = self.host.get_network()
        try:
            network.unblock_peer(ID.from_base58(peer.peer_id))  # we do our own back-off
            if not self.is_connected(peer.peer_id):
                # py-libp2p dials every address its peerstore holds for the peer, each with
                # retries: one dead address (another of a share string's, a stale one) would
                # make this dial time out. This dial is over `peer.addr` alone.
                self.host.get_peerstore().clear_addrs(ID.from_base58(peer.peer_id))
        except Exception:
            pass
        failed = False
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await self.host.connect(peer_info(peer))
        except Exception as exc:  # dial errors are many and varied; all mean "not now"
            failed = True
            self.failed_dials += 1
            self.last_error[peer.peer_id] = _reason(exc)
            log.debug("dial %s failed: %s", peer.addr, exc)
            return False
        finally:
            # Also when cancelled after the connection was made (a short-lived node stopping);
            # never for a failed dial, even if the peer meanwhile dialled us (its address is untried).
            if not failed and self.on_connected is not None and self.is_connected(peer.peer_id):
                self.on_connected(peer)
        return True

    async def _keep(self, peer: PeerAddr) -> None:
        delay = BACKOFF_START_S
        failures = 0
        next_dial = 0.0  # trio time before which this peer is not dialled (its back-off)
        last_dial = -PINNED_REDIAL_S
        connected_since: float | None = None
        pinned = peer.peer_id in self.pinned
        while self.known.get(peer.peer_id) is peer:  # forget() or give-up ends the keeper
            now = trio.current_time()
            if self.is_connected(peer.peer_id):
                connected_since = now if connected_since is None else connected_since
                if now - connected_since >= STABLE_AFTER_S:
                    delay, failures = BACKOFF_START_S, 0
                await trio.sleep(WATCH_INTERVAL_S)
                continue
            connected_since = None
            wanted = self.wants_more() or (pinned and now - last_dial >= PINNED_REDIAL_S)
            if now < next_dial or not wanted:
                await trio.sleep(WATCH_INTERVAL_S * random.uniform(0.8, 1.2))
                continue
            last_dial = now
            addrs = [peer, *self.alternates.get(peer.peer_id, [])]
            ok = await self.dial(addrs[failures % len(addrs)])  # the next address after a failure
            next_dial = trio.current_time() + delay * random.uniform(0.8, 1.2)
            delay = min(delay * 2, BACKOFF_MAX_S)
            if ok:
                if peer.peer_id in self._warned:
                    self._warned.discard(peer.peer_id)
                    log.warning("connected to bootstrap peer %s", peer.addr)
                continue
            failures += 1
            if failures >= GIVE_UP_AFTER and not pinned:
                log.debug("giving up on %s after %d failed dials", peer.addr, failures)
                self.known.pop(peer.peer_id, None)
                return
            if peer.peer_id in self.warn_unreachable and peer.peer_id not in self._warned:
                self._warned.add(peer.peer_id)
                log.warning("cannot reach bootstrap peer %s (%s); retrying in the background (every %g s at most)", peer.addr, self.last_error.get(peer.peer_id, "no answer"), BACKOFF_MAX_S)

    async def _watch(self) -> None:
        """Adopt inbound peers that stay, and (with mDNS) peers mDNS put in the peerstore."""
        while True:
            await trio.sleep(WATCH_INTERVAL_S)
            now = trio.current_time()
            connected = {pid.to_base58() for pid in self.host.get_connected_peers()}
            for key in [k for k in self._inbound_since if k not in connected]:
                del self._inbound_since[key]  # the clock restarts if it comes back
            for pid in self.host.get_connected_peers():
                key = pid.to_base58()
                if key in self.known or key in self.probation or self.is_forgotten(key):
                    continue
                verified = self._dialled_addr(pid)
                if verified is not None:
                    # We dialled it (a DHT lookup does, for its queries): the address is one
                    # our socket reached and the handshake proved the id; as good as our dial.
                    if self.add(verified) and self.on_connected is not None:
                        self.on_connected(verified)
                    continue
                since = self._inbound_since.setdefault(key, now)
                if now - since >= INBOUND_KEEP_AFTER_S and len(self.probation) < MAX_PROBATION:
                    addr = self._listen_addr(pid)
                    if addr is not None:
                        self.probation[key] = addr  # what it says it listens on: untried
            wanted = self.wants_more()  # a node at its cap does not dial back who dropped it
            for key, addr in list(self.probation.items()):
                if wanted and key not in connected and key not in self._probing and self._nursery is not None:
                    self._probing.add(key)
                    self._nursery.start_soon(self._probe, addr)
            if self.use_mdns_peerstore:
                for pid in self.host.get_peerstore().peers_with_addrs():
                    key = pid.to_base58()
                    if key not in self.known and key != self.own_id:
                        addr = self._listen_addr(pid)
                        if addr is not None:
                            self.add(addr)

    async def _probe(self, peer: PeerAddr) -> None:
        """Try an inbound peer's advertised address (it has dropped); kept if a dial works."""
        delay = BACKOFF_START_S
        try:
            for _ in range(PROBE_DIALS):
                if self.is_connected(peer.peer_id):
                    return  # it dialled us again: still untried, it stays a candidate
                if await self.dial(peer):
                    self.add(peer)
                    return
                await trio.sleep(delay * random.uniform(0.8, 1.2))
                delay *= 2
            log.debug("forgetting %s: its advertised address did not answer %d dials", peer.addr, PROBE_DIALS)
        finally:
            self._probing.discard(peer.peer_id)
            if peer.peer_id in self.known or not self.is_connected(peer.peer_id):
                self.probation.pop(peer.peer_id, None)

    def _dialled_addr(self, pid: Any) -> PeerAddr | None:
        """The address of our own (outbound) TCP connection to `pid`, if it is one the peer
        listens on by its peerstore entry (a connection through a relay reaches the relay's
        address, which is not one of the peer's), else None."""
        try:
            # entries may end in /p2p/<id> (identify's do) or not (a dial's)
            listed = {str(a).split("/p2p/")[0] for a in self.host.get_peerstore().addrs(pid) if "/p2p-circuit" not in str(a)}
        except Exception:
            return None
        for conn in self.host.get_network().connections.get(pid) or []:
            addr = remote_addr(conn) if is_outbound(conn) else None
            if addr is not None and addr in listed:
                try:
                    return parse_peer_addr(f"{addr}/p2p/{pid.to_base58()}")
                except Exception:
                    continue
        return None

    def advertised_addr(self, peer_id: str) -> PeerAddr | None:
        """The first TCP address `peer_id` advertises (identify; untried), or None."""
        from libp2p.peer.id import ID

        try:
            return self._listen_addr(ID.from_base58(peer_id))
        except Exception:
            return None

    def _listen_addr(self, pid: Any) -> PeerAddr | None:
        try:
            addrs = self.host.get_peerstore().addrs(pid)
        except Exception:
            return None
        for addr in addrs:
            text = str(addr)
            if "/tcp/" not in text or "/p2p-circuit" in text:  # a relay's address is not the peer's
                continue
            if "/p2p/" not in text:
                text = f"{text}/p2p/{pid.to_base58()}"
            try:
                return parse_peer_addr(text)
            except Exception:
                continue
        return None


def is_outbound(conn: Any) -> bool:
    """Whether we dialled this libp2p connection (py-libp2p's Direction.OUTBOUND)."""
    return getattr(getattr(conn, "direction", None), "name", "") == "OUTBOUND"


def remote_addr(conn: Any) -> str | None:
    """The remote end of a connection as a multiaddr (/ip4/HOST/tcp/PORT), if known."""
    try:
        host, port = conn.muxed_conn.get_remote_address()
    except Exception:
        return None
    return f"/{'ip6' if ':' in str(host) else 'ip4'}/{host}/tcp/{port}"


def _now() -> float:
    return time.monotonic()  # not trio's clock: forget() may be called outside trio


def _reason(exc: BaseException) -> str:
    """A short reason for a failed dial: the innermost message, on one line."""
    if isinstance(exc, trio.TooSlowError):
        return f"no answer within {DIAL_TIMEOUT_S:g} s"
    for _ in range(10):  # bounded: a chain may loop
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:120]

"""Discovery: stay connected to the peers we know, and learn new ones.

Sources: bootstrap multiaddrs (command line and config.toml), peers remembered from earlier runs,
peers that dialled us and stayed, and (behind a flag) peers found by mDNS on the LAN. Each known
peer has one keeper task that re-dials it with exponential back-off (1 s doubling to 60 s, with
jitter) whenever it is not connected, so a dropped peer comes back by itself. Every dial has a
timeout. Peers we reach are handed to `on_connected` (the node remembers them and syncs).
A peer the user named (`warn_unreachable`: the --bootstrap and config.toml addresses) that
does not answer its first dial gets one WARNING line (address and reason) and is retried; a
later success is logged once at WARNING too, so the user sees the problem end.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from p2pgolf.node.host import PeerAddr, parse_peer_addr, peer_info

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

log = logging.getLogger(__name__)

DIAL_TIMEOUT_S = 10.0
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
WATCH_INTERVAL_S = 1.0
INBOUND_KEEP_AFTER_S = 30.0  # an inbound peer connected this long is re-dialled if it drops


class Discovery:
    """Keeps a set of peers dialled; runs in the node's nursery until cancelled."""

    def __init__(self, host: "IHost", *, on_connected: Callable[[PeerAddr], None] | None = None, use_mdns_peerstore: bool = False, warn_unreachable: frozenset[str] = frozenset()) -> None:
        self.host = host
        self.warn_unreachable = warn_unreachable  # peer ids whose failed dials the user must hear of
        self._warned: set[str] = set()
        self.last_error: dict[str, str] = {}
        self.on_connected = on_connected
        self.use_mdns_peerstore = use_mdns_peerstore
        self.own_id = host.get_id().to_base58()
        self.known: dict[str, PeerAddr] = {}
        self.dials = 0
        self.failed_dials = 0
        self._nursery: Any = None
        self._inbound_since: dict[str, float] = {}

    def add(self, peer: PeerAddr) -> None:
        """Keep `peer` connected from now on (no-op for ourselves or a peer already kept)."""
        if peer.peer_id == self.own_id or peer.peer_id in self.known:
            return
        self.known[peer.peer_id] = peer
        if self._nursery is not None:
            self._nursery.start_soon(self._keep, peer)

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
        network = self.host.get_network()
        try:
            network.unblock_peer(ID.from_base58(peer.peer_id))  # we do our own back-off
        except Exception:
            pass
        try:
            with trio.fail_after(DIAL_TIMEOUT_S):
                await self.host.connect(peer_info(peer))
        except Exception as exc:  # dial errors are many and varied; all mean "not now"
            self.failed_dials += 1
            self.last_error[peer.peer_id] = _reason(exc)
            log.debug("dial %s failed: %s", peer.addr, exc)
            return False
        finally:
            # Also when cancelled after the connection was made (a short-lived node stopping).
            if self.on_connected is not None and self.is_connected(peer.peer_id):
                self.on_connected(peer)
        return True

    async def _keep(self, peer: PeerAddr) -> None:
        delay = BACKOFF_START_S
        while True:
            if self.is_connected(peer.peer_id):
                delay = BACKOFF_START_S
                await trio.sleep(WATCH_INTERVAL_S)
                continue
            if await self.dial(peer):
                delay = BACKOFF_START_S
                if peer.peer_id in self._warned:
                    self._warned.discard(peer.peer_id)
                    log.warning("connected to bootstrap peer %s", peer.addr)
                continue
            if peer.peer_id in self.warn_unreachable and peer.peer_id not in self._warned:
                self._warned.add(peer.peer_id)
                log.warning("cannot reach bootstrap peer %s (%s); retrying in the background (every %g s at most)", peer.addr, self.last_error.get(peer.peer_id, "no answer"), BACKOFF_MAX_S)
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, BACKOFF_MAX_S)

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
                if key in self.known:
                    continue
                since = self._inbound_since.setdefault(key, now)
                if now - since >= INBOUND_KEEP_AFTER_S:
                    addr = self._listen_addr(pid)
                    if addr is not None:
                        self.add(addr)
                        if self.on_connected is not None:
                            self.on_connected(addr)
            if self.use_mdns_peerstore:
                for pid in self.host.get_peerstore().peers_with_addrs():
                    key = pid.to_base58()
                    if key not in self.known and key != self.own_id:
                        addr = self._listen_addr(pid)
                        if addr is not None:
                            self.add(addr)

    def _listen_addr(self, pid: Any) -> PeerAddr | None:
        try:
            addrs = self.host.get_peerstore().addrs(pid)
        except Exception:
            return None
        for addr in addrs:
            text = str(addr)
            if "/tcp/" not in text:
                continue
            if "/p2p/" not in text:
                text = f"{text}/p2p/{pid.to_base58()}"
            try:
                return parse_peer_addr(text)
            except Exception:
                continue
        return None


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

"""How many streams one peer may hold open with us at once.

Two bounds, both by `StreamSlots`: our own protocols (sync and blobs together, `Limits.
max_streams_per_peer`), and every inbound stream of every protocol, libp2p's own included
(gossipsub, kad, identify, ping), counted at the swarm before protocol negotiation
(`bound_inbound_streams`, `Limits.max_libp2p_streams_per_peer`). A stream beyond a bound is reset
as soon as it arrives, before anything is read from it, so a peer cannot pin more than its share
of server tasks, buffers and request budget, nor take the host's global stream limit (py-libp2p
0.8.1: 10,000 streams for all peers together, after which every peer's new streams wait).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


class StreamSlots:
    """Counts the open streams per peer across every handler it guards."""

    def __init__(self, max_per_peer: int) -> None:
        self.max_per_peer = max_per_peer
        self.open: dict[str, int] = defaultdict(int)
        self.refused = 0

    def guard(self, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """`handler` behind the per-peer bound (a stream over it is reset unread)."""

        async def guarded(stream: Any) -> None:
            peer = remote_peer(stream)
            if self.open[peer] >= self.max_per_peer:
                self.refused += 1
                log.debug("refusing a stream from %s: %d already open", peer, self.open[peer])
                try:
                    await stream.reset()
                except Exception:
                    pass
                return
            self.open[peer] += 1
            try:
                await handler(stream)
            finally:
                self.open[peer] -= 1
                if not self.open[peer]:
                    del self.open[peer]

        return guarded


def bound_inbound_streams(host: Any, max_per_peer: int) -> StreamSlots:
    """Put every inbound stream `host` accepts, whatever its protocol, behind a per-peer bound;
    returns the slots (their `open` and `refused` show what it did). Call before the host runs."""
    network = host.get_network()
    slots = StreamSlots(max_per_peer)
    network.set_stream_handler(slots.guard(network.common_stream_handler))
    return slots


def remote_peer(stream: Any) -> str:
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except Exception:
        return "unknown"

"""How many streams of our own protocols (sync, blobs) one peer may hold open with us at once.

A stream beyond `max_per_peer` is reset as soon as it arrives, before anything is read from it,
so a peer cannot pin more than its share of server tasks, buffers and request budget.
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


def remote_peer(stream: Any) -> str:
    try:
        return stream.muxed_conn.peer_id.to_base58()
    except Exception:
        return "unknown"

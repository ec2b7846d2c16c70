"""A libp2p notifee that reports new connections and ignores every other network event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["connection_notifee"]


def connection_notifee(on_connected: Callable[[Any], None]) -> Any:
    """A notifee that calls `on_connected(conn)` (synchronously, in trio) for every new connection."""
    from libp2p.abc import INotifee

    class ConnectionNotifee(INotifee):
        async def connected(self, network: Any, conn: Any) -> None:
            on_connected(conn)

        async def disconnected(self, network: Any, conn: Any) -> None:
            pass

        async def opened_stream(self, network: Any, stream: Any) -> None:
            pass

        async def closed_stream(self, network: Any, stream: Any) -> None:
            pass

        async def listen(self, network: Any, multiaddr: Any) -> None:
            pass

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            pass

    return ConnectionNotifee()

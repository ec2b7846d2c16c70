"""Reachability: is this node publicly reachable? libp2p's AutoNAT v1 (/libp2p/autonat/1.0.0),
with the one fix it needs in py-libp2p 0.8.1.

The wire protocol and both halves are the library's `AutoNATService`: a node asks connected
peers to dial it back at the addresses it gives (its listen addresses and its observed public IP
with the listen port); a peer dials only addresses on the IP it sees the request come from,
never over a relayed connection, and answers OK or an error.

The fix: 0.8.1's server dials back with `host.connect`, which returns at once when a connection
to the peer already exists, which it always does (the request came over one). Every node that
advertises the IP the server sees would be told "reachable", behind a NAT or not.
`DialBackAutoNAT` dials a fresh connection instead (the swarm's `dial_addr`, as the library's own
DCUtR does for the same reason) and closes it once it is up; it tries at most
`MAX_DIAL_BACK_ADDRS` addresses per request and runs at most `MAX_DIAL_BACKS` dial-backs at once.

`Reachability.run` asks up to `MAX_SERVERS` directly connected peers whenever the answer is
unknown (and every `recheck_s` after), and calls the result public once most of those that
answered said OK, private once most said the dial-back failed (a refusal is no answer: the
server found nothing to dial, typically before identify told us our public IP); it never asks
over a relayed connection, where the server cannot see our address.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

log = logging.getLogger(__name__)

MAX_SERVERS = 4  # the spec's "more than three" servers, when a node has that many peers
DIAL_BACK_TIMEOUT_S = 4.0
MAX_DIAL_BACK_ADDRS = 8  # addresses tried per request (the spec bounds them; 0.8.1 does not)
MAX_DIAL_BACKS = 4  # dial-backs in progress at once, all requesters together
QUERY_TIMEOUT_S = 10.0


def make_autonat(host: "IHost") -> Any:
    """A libp2p AutoNATService on `host` (serving dial-backs) whose dial-back makes a new
    connection instead of reusing the one the request came over."""
    from libp2p.host.autonat.autonat import AutoNATService

    limiter = trio.CapacityLimiter(MAX_DIAL_BACKS)

    class DialBackAutoNAT(AutoNATService):
        async def _try_dial(self, peer_id: Any, addrs: list[bytes]) -> bytes | None:
            async with limiter:
                return await self._dial_fresh(peer_id, addrs[:MAX_DIAL_BACK_ADDRS])

        async def _dial_fresh(self, peer_id: Any, addrs: list[bytes]) -> bytes | None:
            import multiaddr

            network = self.host.get_network()
            for raw in addrs:
                try:
                    with trio.fail_after(DIAL_BACK_TIMEOUT_S):
                        # One attempt per address: dial_addr's retries with back-off would take
                        # seconds per dead address, and a dial-back answers "can it be reached now".
                        single = getattr(network, "_dial_addr_single_attempt", None) or network.dial_addr
                        conn = await single(multiaddr.Multiaddr(raw), peer_id)
                except Exception as exc:  # unreachable there: try the next address
                    log.debug("autonat dial-back to %s failed: %s", peer_id, exc)
                    continue
                with trio.move_on_after(DIAL_BACK_TIMEOUT_S):
                    try:
                        await conn.close()
                    except Exception:
                        pass
                return bytes(raw)
            return None

    return DialBackAutoNAT(host, serve=True)


def is_relayed(conn: Any) -> bool:
    """True for a connection that runs over a circuit relay."""
    try:
        if getattr(conn.get_connection_type(), "name", "") == "RELAYED":
            return True
        return any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses())
    except Exception:
        return False


def direct_peers(host: "IHost") -> list[Any]:
    """Connected peers (libp2p IDs) with at least one direct, not relayed, connection."""
    out = []
    for pid, conns in host.get_network().connections.items():
        conns = conns if isinstance(conns, list) else [conns]
        if any(not is_relayed(c) for c in conns):
            out.append(pid)
    return out


def verdict(answers: list[bool]) -> str:
    """"public" when most answers say the dial-back worked, "private" when most say it did not,
    "unknown" without answers or on a tie."""
    ok = sum(answers)
    if not answers or ok * 2 == len(answers):
        return "unknown"
    return "public" if ok * 2 > len(answers) else "private"


class Reachability:
    """This node's reachability ("unknown", "public" or "private"), found with AutoNAT."""

    def __init__(self, host: "IHost", candidate_addrs: Any, *, retry_s: float = 2.0, recheck_s: float = 300.0) -> None:
        self.host = host
        self.candidate_addrs = candidate_addrs  # () -> list of multiaddr strings to have dialled
        self.retry_s = retry_s
        self.recheck_s = recheck_s
        self.autonat = make_autonat(host)
        self.status = "unknown"
        self.checks = 0
        self.changed = trio.Event()  # set (and replaced) whenever status changes

    async def run(self) -> None:
        """Until cancelled: check while unknown (every `retry_s`), then every `recheck_s`."""
        while True:
            await trio.sleep(self.retry_s if self.status == "unknown" else self.recheck_s)
            servers = direct_peers(self.host)
            if not servers:
                continue
            random.shuffle(servers)
            await self.check(servers[:MAX_SERVERS])

    async def check(self, servers: list[Any]) -> str:
        """Ask each of `servers` (libp2p IDs) to dial us back; update and return the status.
        OK counts as reachable, E_DIAL_ERROR as not; a refusal, an error or no answer in time
        (no AutoNAT there) counts as no answer."""
        import multiaddr
        from libp2p.host.autonat.pb.autonat_pb2 import Message

        addrs = []
        for text in self.candidate_addrs():
            try:
                addrs.append(multiaddr.Multiaddr(text.split("/p2p/")[0]).to_bytes())
            except Exception:
                continue
        answers: list[bool] = []

        async def ask(server: Any) -> None:
            try:
                status, _ = await self.autonat.query_server(server, addrs, timeout=QUERY_TIMEOUT_S)
            except Exception as exc:
                log.debug("autonat query to %s failed: %s", server, exc)
                return
            if status == int(Message.OK):
                answers.append(True)
            elif status == int(Message.E_DIAL_ERROR):
                answers.append(False)
            # E_DIAL_REFUSED (no address on the IP it sees, e.g. before identify told us our
            # public IP) and errors say nothing about reachability: no answer.

        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(ask, server)
        self.checks += 1
        found = verdict(answers)
        if found != "unknown" and found != self.status:
            log.info("reachability: %s (%d of %d peers dialled us back)", found, sum(answers), len(answers))
            self.status = found
            self.changed.set()
            self.changed = trio.Event()
        return self.status

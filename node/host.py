"""The libp2p host of a node: our own Ed25519 key as peer id, Noise only, Yamux only, TCP.

`make_host` builds a host that offers exactly one security protocol (Noise; never plaintext,
where a dialer could claim any peer id) and one muxer (Yamux). `parse_listen` and
`parse_peer_addr` turn user-supplied multiaddr strings into values or a one-line error naming
the bad address. libp2p's own background dialler (AutoConnector) is switched off: the node
dials only whom node/discovery.py and node/peer_exchange.py choose. libp2p is imported inside
functions so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity, public_key_from_peer_id

if TYPE_CHECKING:  # pragma: no cover - typing only
    import multiaddr
    from libp2p.abc import IHost

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"
"""Safe default: loopback with a free port. Pass /ip4/0.0.0.0/tcp/4001 to be reachable by others."""


@dataclass(frozen=True)
class PeerAddr:
    """A dialable peer: its peer id (12D3KooW...) and the multiaddr that ends in /p2p/<id>."""

    peer_id: str
    addr: str


def make_host(identity: Identity, listen: list[str] | tuple[str, ...], *, enable_mdns: bool = False, addrs_factory: Any = None) -> "IHost":
    """A libp2p host keyed by `identity`, offering Noise + Yamux, listening (once run) on `listen`;
    `addrs_factory` (libp2p's AddrsFactory) adds to the addresses it advertises (relay addresses)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    private = Ed25519PrivateKey.from_bytes(identity.seed)
    key_pair = KeyPair(private, private.get_public_key())
    noise = NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: noise},
        muxer_opt={YAMUX_ID: Yamux},
        listen_addrs=[parse_listen(a) for a in listen],
        enable_mDNS=enable_mdns,
        addrs_factory=addrs_factory,
    )
    # py-libp2p 0.8.1's AutoConnector dials every peer in the peerstore (below 100 connections,
    # again every 5 s to 5 min), so any address a peer advertised would be dialled for ever.
    # node/discovery.py and node/peer_exchange.py choose whom to dial; this host dials no one else.
    host.get_network().auto_connector.maybe_connect = _dial_nobody
    return host


async def _dial_nobody() -> None:
    return None


def parse_listen(text: str) -> "multiaddr.Multiaddr":
    """A TCP listen multiaddr such as /ip4/127.0.0.1/tcp/0; ProtocolError naming the text otherwise."""
    import multiaddr

    try:
        addr = multiaddr.Multiaddr(text)
        names = [p.name for p in addr.protocols()]
    except Exception as exc:
        raise ProtocolError(f"{text!r} is not a multiaddr ({exc})", "listen") from None
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ProtocolError(f"{text!r} must look like /ip4/ADDRESS/tcp/PORT", "listen")
    return addr


def parse_peer_addr(text: str) -> PeerAddr:
    """A peer multiaddr ending in /p2p/<Ed25519 peer id>; ProtocolError naming the text otherwise."""
    import multiaddr

    try:
        addr = multiaddr.Multiaddr(text)
        peer_id = addr.value_for_protocol("p2p")
        names = [p.name for p in addr.protocols()]
    except Exception:
        raise ProtocolError(f"{text!r} is not a peer multiaddr (expected /ip4/HOST/tcp/PORT/p2p/12D3KooW...)", "bootstrap") from None
    if not peer_id or "tcp" not in names:
        raise ProtocolError(f"{text!r} must name a TCP address and end with /p2p/<peer id>", "bootstrap")
    try:
        public_key_from_peer_id(str(peer_id))
    except ProtocolError:
        raise ProtocolError(f"{text!r}: {peer_id} is not the peer id of an Ed25519 key", "bootstrap") from None
    return PeerAddr(peer_id=str(peer_id), addr=str(addr))


def peer_info(peer: PeerAddr) -> Any:
    """libp2p PeerInfo for a parsed peer address."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    return info_from_p2p_addr(multiaddr.Multiaddr(peer.addr))


def full_addrs(host: "IHost") -> list[str]:
    """The host's listen addresses with /p2p/<our id>, ready to give to other people (a
    wildcard such as 0.0.0.0 is replaced by this machine's interface addresses)."""
    own = host.get_id().to_string()
    out = []
    for addr in host.get_addrs():
        for text in concrete_addrs(str(addr)):
            out.append(text if "/p2p/" in text else f"{text}/p2p/{own}")
    return list(dict.fromkeys(out))


def concrete_addrs(text: str) -> list[str]:
    """`text` itself, or for a wildcard listen address (0.0.0.0, ::) the same port on each of
    this machine's interfaces (read locally; nothing is sent)."""
    if not text.startswith(("/ip4/0.0.0.0/", "/ip6/::/")):
        return [text]
    import multiaddr
    from libp2p.utils.address_validation import expand_wildcard_address

    try:
        return [str(a) for a in expand_wildcard_address(multiaddr.Multiaddr(text))] or [text]
    except Exception:
        return [text]


def listen_port(text: str) -> int:
    """The TCP port of a listen multiaddr (0: any free port)."""
    return int(parse_listen(text).value_for_protocol("tcp"))


def with_port(text: str, port: int) -> str:
    """`text` (a listen multiaddr) with its TCP port replaced by `port`."""
    addr = parse_listen(text)
    names = [p.name for p in addr.protocols()]
    return f"/{names[0]}/{addr.value_for_protocol(names[0])}/tcp/{port}"


def refuse_taken_ports(listen: list[str] | tuple[str, ...]) -> None:
    """ProtocolError if another process already listens on one of these fixed ports.

    py-libp2p binds with SO_REUSEPORT (for hole punching), so on Linux a second node would share
    a port with the first and silently get half its connections. A plain bind without
    SO_REUSEPORT fails against any listener on the port, which is what this checks; SO_REUSEADDR
    still lets a restarted node take its port back while old connections sit in TIME_WAIT."""
    import errno
    import socket

    for text in listen:
        port = listen_port(text)
        if port == 0:
            continue
        addr = parse_listen(text)
        family, host = (socket.AF_INET6, addr.value_for_protocol("ip6")) if "ip6" in [p.name for p in addr.protocols()] else (socket.AF_INET, addr.value_for_protocol("ip4"))
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                why = "already in use (another p2pgolf node or program listens there)" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise ProtocolError(f"cannot listen on {text}: port {port} is {why}; pick another port with --listen", "listen") from None

"""Address ranges: which peers one operator could cheaply fill a node's peer lists with.

Ids are free and addresses within one network are cheap, so every list of peers a node keeps
(Discovery's kept peers, known_peers.toml) holds at most a few entries per range: an IPv4
/24, an IPv6 /48, a DNS name. Loopback is this machine (a user's own test network), so it
has no range and no such bound.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

PER_RANGE = 4  # entries kept per range in a list of learned peers


def address_range(addr: str) -> str | None:
    """The range of a multiaddr ("/ip4/203.0.113.7/tcp/4001/p2p/...": "ip4 203.0.113.0/24"),
    None for loopback (and for text that names no host, which nothing dials anyway)."""
    parts = addr.split("/")
    if len(parts) < 3:
        return None
    kind, host = parts[1], parts[2]
    if kind in ("ip4", "ip6"):
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        if ip.is_loopback:
            return None
        prefix = 24 if ip.version == 4 else 48
        return f"{kind} {ipaddress.ip_network(f'{ip}/{prefix}', strict=False)}"
    if kind.startswith("dns"):
        return None if host.lower() == "localhost" else f"dns {host.lower()}"
    return None


def bounded_by_range(addrs: Iterable[str], *, per_range: int = PER_RANGE) -> list[str]:
    """`addrs` in order, dropping each one whose range already has `per_range` entries before
    it (loopback addresses are not bounded)."""
    counts: Counter[str] = Counter()
    out = []
    for addr in addrs:
        key = address_range(addr)
        if key is not None:
            if counts[key] >= per_range:
                continue
            counts[key] += 1
        out.append(addr)
    return out

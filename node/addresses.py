"""The addresses others can actually use to reach this node: one list, built in one place.

`usable_addrs` is what `p2pgolf id`, `p2pgolf status` and `join`'s "listening:" lines print
(and what a share string encodes). It is a pure function of what the node knows:

- its listen addresses (wildcards already expanded to this machine's interfaces);
- the public IP peers observed it at (libp2p identify), given with the listen port: the address
  that works once that port reaches this machine (a forwarded port, or a NAT that keeps ports,
  which is also what hole punching dials);
- relay addresses `/ip4/R/tcp/P/p2p/RELAY/p2p-circuit/p2p/SELF` for the relays it holds a
  reservation on.

A node known to be unreachable lists its relay addresses first, because only those work; a
reachable one lists them last (it holds none unless it was unreachable before).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

REACHABILITY = ("unknown", "public", "private")


def usable_addrs(peer_id: str, listen: Iterable[str], *, observed_ips: Iterable[str] = (), relays: Iterable[str] = (), reachability: str = "unknown") -> list[str]:
    """Dialable multiaddrs ending in /p2p/`peer_id`, without duplicates.

    `listen`: concrete TCP listen addresses (/ip4/A/tcp/P, with or without /p2p/); `observed_ips`:
    public IPs peers saw us at (private, loopback and unparsable ones are dropped); `relays`:
    relay base addresses (/ip4/R/tcp/P/p2p/RELAY), each becoming RELAY/p2p-circuit/p2p/SELF;
    `reachability`: one of REACHABILITY."""
    if reachability not in REACHABILITY:
        raise ValueError(f"reachability must be one of {', '.join(REACHABILITY)}, not {reachability!r}")
    suffix = f"/p2p/{peer_id}"
    direct = [_strip_p2p(a, peer_id) for a in listen]
    ports = [(_family(a), a.split("/tcp/")[1].split("/")[0]) for a in direct if "/tcp/" in a]
    listen_ips = {a.split("/")[2] for a in direct if a.count("/") >= 2}
    for ip in observed_ips:
        family = _public_family(ip)
        if family is None or ip in listen_ips:
            continue
        direct += [f"/{family}/{ip}/tcp/{port}" for fam, port in ports if fam == family]
    circuits = [f"{r}/p2p-circuit" for r in relays]
    ordered = [*circuits, *direct] if reachability == "private" else [*direct, *circuits]
    return list(dict.fromkeys(f"{a}{suffix}" for a in ordered))


def _strip_p2p(addr: str, peer_id: str) -> str:
    """`addr` without a trailing /p2p/`peer_id`."""
    if addr.endswith(f"/p2p/{peer_id}"):
        return addr[: -len(f"/p2p/{peer_id}")]
    return addr


def _family(addr: str) -> str:
    return addr.split("/")[1] if addr.startswith("/") else ""


def _public_family(ip: str) -> str | None:
    """"ip4"/"ip6" for a globally routable-looking address; None for private, loopback,
    link-local or unparsable ones (documentation ranges count as public: tests use them)."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified or parsed.is_multicast:
        return None
    if parsed.is_private and not _is_documentation(parsed):
        return None
    return "ip4" if parsed.version == 4 else "ip6"


_DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def _is_documentation(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip.version == net.version and ip in net for net in _DOCUMENTATION)

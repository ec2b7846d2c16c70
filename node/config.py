"""Network settings from the data directory: bootstrap peers, listen addresses, limits, and the
peers this node remembers across restarts.

`config.toml` is the user's file; we only read it (TOML, via tomllib):

    [network]
    bootstrap = ["/ip4/203.0.113.5/tcp/4001/p2p/12D3KooW...", "p2pgolf://..."]
    listen = ["/ip4/0.0.0.0/tcp/4001"]   # default /ip4/127.0.0.1/tcp/0 (this machine only)
    mdns = false
    max_degree = 16      # connections kept at most (the target is 8, or this if lower)

    [limits]
    unknown_key_cap = 10000          # records per unknown key and benchmark
    unknown_quota_bytes = 268435456  # bytes of records from unknown keys, all together

    [blobs]              # retention of peers' artifacts (own results and the current best: always)
    max_blobs = 200
    max_bytes = 2147483648

    [relay]              # NAT traversal (node/relay.py); also `join --no-relay-service` etc.
    service = true                   # serve as a circuit relay when reachable
    max_reservations = 4             # peers that may hold a slot on this relay at once
    max_circuits = 8                 # open relayed connections per reservation
    circuit_bytes = 67108864         # bytes per relayed connection
    circuit_duration_s = 3600        # seconds per relayed connection
    reservations = 2                 # relays this node reserves on when it is not reachable
    hole_punch = true                # upgrade relayed connections to direct ones (DCUtR)

    [proposers]          # external proposers (node/proposers), as `join --proposer NAME=COMMAND`
    heuristics = "python3 examples/proposers/scripted.py"
    agent = { command = "python3 examples/proposers/chat.py", timeout_s = 120, max_output_bytes = 65536 }

`known_peers.toml` is ours: `pinned` (bootstrap peers, never evicted) and `peers` (peers we have
been connected to, newest first, one address per peer id, at most PER_RANGE per address range
and MAX_KNOWN_PEERS in all: ids are free, so many fresh ids from one network cannot push the
others out), rewritten atomically
(write to a temporary file, then rename) so a crash never leaves half a file. A bad value in
either file is a ProtocolError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field

from p2pgolf.node.address_ranges import bounded_by_range
from p2pgolf.node.home import Home
from p2pgolf.node.host import DEFAULT_LISTEN, concrete_addrs, listen_port, parse_listen, parse_peer_addr, with_port
from p2pgolf.node.limits import Limits
from p2pgolf.node.relay_settings import RelaySettings
from p2pgolf.pool.blobs import BlobError, Retention
from p2pgolf.protocol.errors import ProtocolError

KNOWN_PEERS_FILE = "known_peers.toml"
LISTEN_PORT_FILE = "listen_port"  # the port this node listened on last time (one number)
MAX_KNOWN_PEERS = 64
MAX_DEGREE_LIMIT = 1000  # the most connections `max_degree` may ask for


@dataclass(frozen=True)
class NodeConfig:
    """Settings read from config.toml (command-line flags are added on top by the caller)."""

    bootstrap: tuple[str, ...] = ()
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    mdns: bool = False
    max_degree: int | None = None  # None: MeshSettings' default
    limits: Limits = field(default_factory=Limits)
    retention: Retention = field(default_factory=Retention)
    proposers: tuple = ()  # node.proposers.spec.ProposerSpec values
    relay: RelaySettings = field(default_factory=RelaySettings)


def load_config(home: Home) -> NodeConfig:
    """The node's config.toml, or defaults if there is none. ProtocolError for a bad file."""
    path = home.config_file
    if not path.exists():
        return NodeConfig()
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProtocolError(f"cannot read it: {exc}", where) from None
    unknown = sorted(set(data) - {"network", "limits", "blobs", "proposers", "relay"})
    if unknown:
        raise ProtocolError(f"unknown section(s) {', '.join(unknown)}; expected [network], [limits], [blobs], [relay] and [proposers]", where)
    network = _table(data, "network", where)
    extra = sorted(set(network) - {"bootstrap", "listen", "mdns", "max_degree"})
    if extra:
        raise ProtocolError(f"unknown key(s) {', '.join(extra)}; expected bootstrap, listen, mdns, max_degree", f"{where} [network]")
    from p2pgolf.node.share_string import expand_peer_addrs

    try:  # multiaddrs or p2pgolf:// share strings
        bootstrap = expand_peer_addrs(_strings(network.get("bootstrap", []), f"{where} network.bootstrap"))
    except ProtocolError as exc:
        raise ProtocolError(str(exc), f"{where} network.bootstrap") from None
    listen = _strings(network.get("listen", [DEFAULT_LISTEN]), f"{where} network.listen") or (DEFAULT_LISTEN,)
    for addr in listen:
        try:
            parse_listen(addr)
        except ProtocolError as exc:
            raise ProtocolError(str(exc), f"{where} network.listen") from None
    mdns = network.get("mdns", False)
    if type(mdns) is not bool:
        raise ProtocolError("must be true or false", f"{where} network.mdns")
    max_degree = network.get("max_degree")
    if max_degree is not None and (type(max_degree) is not int or not 1 <= max_degree <= MAX_DEGREE_LIMIT):
        raise ProtocolError(f"must be a whole number from 1 to {MAX_DEGREE_LIMIT}, not {max_degree!r}", f"{where} network.max_degree")
    limits_table = _table(data, "limits", where)
    known = {f.name for f in dataclasses.fields(Limits)}
    extra = sorted(set(limits_table) - known)
    if extra:
        raise ProtocolError(f"unknown key(s) {', '.join(extra)}; expected some of {', '.join(sorted(known))}", f"{where} [limits]")
    try:
        limits = Limits(**limits_table)
    except ProtocolError as exc:
        raise ProtocolError(str(exc), where) from None
    blobs_table = _table(data, "blobs", where)
    extra = sorted(set(blobs_table) - {"max_blobs", "max_bytes"})
    if extra:
        raise ProtocolError(f"unknown key(s) {', '.join(extra)}; expected max_blobs, max_bytes", f"{where} [blobs]")
    try:
        retention = Retention(**blobs_table)
    except BlobError as exc:
        raise ProtocolError(str(exc), where) from None
    from p2pgolf.node.proposers.spec import config_spec

    proposers = tuple(config_spec(name, value, f"{where} [proposers]") for name, value in _table(data, "proposers", where).items())
    relay = relay_settings(_table(data, "relay", where), f"{where} [relay]")
    return NodeConfig(bootstrap=tuple(bootstrap), listen=tuple(listen), mdns=mdns, max_degree=max_degree, limits=limits, retention=retention, proposers=proposers, relay=relay)


def relay_settings(table: dict, where: str, base: RelaySettings | None = None) -> RelaySettings:
    """RelaySettings from a [relay] table (or join's flags) over `base`; ProtocolError naming
    the key for an unknown key or a bad value."""
    base = base or RelaySettings()
    known = {f.name for f in dataclasses.fields(RelaySettings)}
    extra = sorted(set(table) - known)
    if extra:
        raise ProtocolError(f"unknown key(s) {', '.join(extra)}; expected some of {', '.join(sorted(known))}", where)
    for key in ("service", "hole_punch"):
        if key in table and type(table[key]) is not bool:
            raise ProtocolError(f"{key} must be true or false, not {table[key]!r}", where)
    try:
        return dataclasses.replace(base, **table)
    except ValueError as exc:
        raise ProtocolError(str(exc), where) from None


def load_known_peers(home: Home) -> list[str]:
    """Peer multiaddrs remembered from earlier runs: the pinned ones first, then the learned ones
    newest first (bad lines are skipped, never fatal)."""
    pinned, learned = _read_known_peers(home)
    return list(dict.fromkeys([*pinned, *learned]))


def load_pinned_peers(home: Home) -> list[str]:
    """known_peers.toml's `pinned` addresses (bootstrap peers of earlier runs and any the user
    added): kept for ever, never evicted."""
    return _read_known_peers(home)[0]


def save_known_peers(home: Home, addrs: list[str], *, pinned: list[str] | tuple[str, ...] = (), established: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Remember `addrs` (newest first; one address per peer id, at most PER_RANGE per address
    range (node/address_ranges.py), at most MAX_KNOWN_PEERS) and pin `pinned` (bootstrap
    addresses). Pinned addresses, those given now and those already in the file (a user may add
    their own), are never evicted and count against neither bound. Of `established` (the learned
    peers of earlier runs) up to half of MAX_KNOWN_PEERS stay however many newer peers come, so
    the peers of one run cannot push out every peer that worked before (loopback has no address
    range to bound it). Returns the learned addresses kept."""
    old_pinned, _ = _read_known_peers(home)
    keep = list(dict.fromkeys([*old_pinned, *(_valid(a) for a in pinned)]))
    keep = [a for a in keep if a]
    unique = _learned([a for a in addrs if a not in keep], limit=None)
    old = set(established)
    chosen = {a for a in unique if a in old}
    chosen = set([a for a in unique if a in chosen][: MAX_KNOWN_PEERS // 2])
    chosen |= set([a for a in unique if a not in chosen][: MAX_KNOWN_PEERS - len(chosen)])
    unique = [a for a in unique if a in chosen]
    path = home.root / KNOWN_PEERS_FILE
    tmp = path.with_suffix(".toml.tmp")
    lines = ["# Written by p2pgolf. pinned: bootstrap peers (and any you add), never evicted.", "pinned = ["]
    lines += [f'    "{a}",' for a in keep if '"' not in a and "\\" not in a]
    lines += ["]", "# Peers this node has been connected to, newest first.", "peers = ["]
    lines += [f'    "{a}",' for a in unique if '"' not in a and "\\" not in a]
    lines.append("]")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return unique


def _learned(addrs: list[str], limit: int | None = MAX_KNOWN_PEERS) -> list[str]:
    """Newest first: the first address of each peer id, PER_RANGE per range, at most `limit`."""
    seen: set[str] = set()
    newest = []
    for addr in addrs:
        peer_id = addr.rsplit("/p2p/", 1)[-1]
        if peer_id not in seen:
            seen.add(peer_id)
            newest.append(addr)
    return bounded_by_range(newest)[:limit]


def load_listen_port(home: Home) -> int | None:
    """The TCP port this node listened on last time, or None (none yet, or an unreadable file)."""
    try:
        port = int((home.root / LISTEN_PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return port if 0 < port < 65536 else None


def save_listen_port(home: Home, port: int) -> None:
    """Remember `port` (atomically), so the next start listens where peers last saw us."""
    path = home.root / LISTEN_PORT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def dialable_addrs(home: Home, peer_id: str) -> list[str]:
    """The addresses others can dial this node at when it runs (config.toml's listen addresses,
    /tcp/0 ones on the remembered port, wildcards as this machine's interface addresses; those
    with no port known yet are left out).
    ProtocolError for a bad config.toml."""
    port = load_listen_port(home)
    out = []
    for addr in load_config(home).listen:
        if listen_port(addr) == 0:
            if port is None:
                continue
            addr = with_port(addr, port)
        out += [f"{a}/p2p/{peer_id}" for a in concrete_addrs(addr)]
    return list(dict.fromkeys(out))


def _read_known_peers(home: Home) -> tuple[list[str], list[str]]:
    path = home.root / KNOWN_PEERS_FILE
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return [], []

    def addrs(key: str) -> list[str]:
        value = data.get(key)
        return [a for a in map(_valid, value if isinstance(value, list) else []) if a]

    return addrs("pinned"), _learned(addrs("peers"))


def _valid(addr: object) -> str | None:
    try:
        return parse_peer_addr(addr).addr  # type: ignore[arg-type]
    except (ProtocolError, TypeError):
        return None


def _table(data: dict, name: str, where: str) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ProtocolError("must be a table", f"{where} [{name}]")
    return value


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError("must be a list of strings", where)
    return tuple(value)


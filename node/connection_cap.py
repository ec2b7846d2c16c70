"""Which connections a node closes when it holds more than its cap (pure logic, no networking).

A node keeps about `target` connections and at most `cap` (node/peer_exchange.py's
MeshSettings.target_degree and max_degree). Above the cap it closes connections down to the
target, in one step (the low and high watermarks of libp2p's connection managers), so DHT
lookups and other peers' dials do not each cost a close.

`to_trim` guarantees:
- nothing is closed while there are at most `cap` connections;
- a protected connection is never chosen: a pinned or bootstrap peer, a peer gossip keeps
  (node/gossip.py Gossip.kept_peers: the peer of a key we pin, among others), a peer in the middle of
  a sync or a blob transfer, or a connection younger than the grace period (a peer just dialled
  on purpose, or one that has not had the time to sync);
- at most `len(conns) - target` are chosen (fewer when too many are protected);
- among the rest, the most redundant go first: a peer in an address range (node/address_ranges.py)
  or in a Kademlia bucket (the length of the prefix its id's hash shares with ours) that many of
  our other connections are in is reached through many others, so closing it costs the network
  the least diversity; then peers outside our gossip meshes before mesh members (closing a mesh
  member makes gossipsub graft a new one); then inbound before outbound (our own dials were
  chosen at random over the routing table); then the youngest.

"Reached through many others" is judged from what this node sees of its own connections: no
peer tells us whom it is connected to (that would be a wire change).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

GRACE_S = 20.0  # libp2p's connection managers use the same grace period


@dataclass(frozen=True)
class Connection:
    """What the cap needs to know of one connected peer."""

    peer_id: str
    age_s: float
    protected: bool = False  # pinned, bootstrap, kept by gossip, syncing or transferring
    outbound: bool = False
    in_mesh: bool = False  # a member of one of our gossipsub meshes
    addr_range: str | None = None  # node.address_ranges.address_range of its address
    bucket: int = 0  # Kademlia bucket: see `bucket_of`


def to_trim(conns: list[Connection], *, target: int, cap: int, grace_s: float = GRACE_S) -> list[str]:
    """Peer ids to disconnect, most redundant first; empty while `len(conns) <= cap`."""
    if target < 0 or cap < target:
        raise ValueError(f"the cap ({cap}) must be at least the target degree ({target}), and the target at least 0")
    if len(conns) <= cap:
        return []
    ranges = Counter(c.addr_range for c in conns if c.addr_range is not None)
    buckets = Counter(c.bucket for c in conns)
    candidates = [c for c in conns if not c.protected and c.age_s >= grace_s]

    def redundancy(c: Connection) -> tuple:
        shared_range = ranges[c.addr_range] if c.addr_range is not None else 0
        return (-shared_range, -buckets[c.bucket], c.in_mesh, c.outbound, c.age_s, c.peer_id)

    candidates.sort(key=redundancy)
    return [c.peer_id for c in candidates[: len(conns) - target]]


def bucket_of(own_peer_id: str, peer_id: str) -> int:
    """The Kademlia bucket of `peer_id` as seen from `own_peer_id`: the number of leading bits
    the SHA-256 of their ids' text share. (libp2p's DHT hashes the id's bytes instead; for
    telling crowded buckets from sparse ones any fixed hash spreads peers the same way.)"""
    a = int.from_bytes(hashlib.sha256(own_peer_id.encode()).digest(), "big")
    b = int.from_bytes(hashlib.sha256(peer_id.encode()).digest(), "big")
    return 256 - (a ^ b).bit_length()

"""A snapshot of a running node, and how it is shown: one status line, a peers table, JSON.

`NodeStatus` is a plain value (what the control socket sends and `p2pgolf status --json`
prints); rendering never touches the node itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class PeerStatus:
    """One connected peer."""

    peer_id: str
    addrs: tuple[str, ...]
    topics: tuple[str, ...]  # benchmark names we share with it over gossip
    invalid: int  # invalid records it sent us


@dataclass(frozen=True)
class NodeStatus:
    """What a node is doing right now."""

    peer_id: str
    addrs: tuple[str, ...]
    benches: tuple[str, ...]
    peers: tuple[PeerStatus, ...]
    pool_records: int  # records of our benchmarks in the pool
    records_in: int  # new records stored from peers (gossip and sync)
    records_in_by_sync: int  # of which sync brought
    records_out: int  # records we published plus records we served by sync
    rejected: int  # records refused at the edge (invalid, blocked, over cap, rate limited)
    gossip_received: int
    syncs: int
    uptime_s: float
    worker: str  # "none", "running", "stopped" or "failed: ..."
    # The research loop's experiment in progress (n, operator, candidate, base, diff, why,
    # phase, step, train_loss, tokens_per_s, elapsed_s, training_s, budget_s, deadline_s,
    # remaining) or None.
    experiment: dict | None = None
    # Its latest finished experiments, newest last (n, candidate, operator, status, val_bpb,
    # steps, seconds, record, note).
    finished: tuple[dict, ...] = ()
    # What trusted peers (own and pinned keys) announce they are training now, newest first
    # (author, peer_id, bench, hw, candidate, base, diff, tokenizer, running_s, expires_in_s).
    peers_running: tuple[dict, ...] = ()
    proposers: dict = field(default_factory=dict)  # name -> today's requests, tokens, kept, dropped (node.proposers.operator.usage_summary)
    # Syncs in progress: peer, bench, expected (records the peer's summary says we lack),
    # fetched, added. A late joiner's catch-up shows here.
    syncing: tuple[dict, ...] = ()
    # Bytes of records from unknown keys against their quota (unknown_bytes, unknown_records, quota_bytes).
    quota: dict = field(default_factory=dict)
    # NAT traversal (node/reachability.py, node/relay.py): "public", "private" or "unknown";
    # the relays holding a reservation for us; whether we serve as a relay; the peers we reach
    # only through a relay now; those we ever had a relayed connection with; and of those, the
    # ones we now reach directly (hole punching, DCUtR).
    reachability: str = "unknown"
    relays: tuple[str, ...] = ()
    relaying: bool = False
    relayed_peers: tuple[str, ...] = ()
    met_through_relay: tuple[str, ...] = ()
    upgraded_to_direct: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "NodeStatus":
        peers = tuple(PeerStatus(p["peer_id"], tuple(p["addrs"]), tuple(p["topics"]), int(p["invalid"])) for p in data["peers"])
        fields = {k: v for k, v in data.items() if k != "peers" and k in cls.__dataclass_fields__}
        for key in ("addrs", "benches", "finished", "peers_running", "syncing", "relays", "relayed_peers", "met_through_relay", "upgraded_to_direct"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(peers=peers, **fields)

    def line(self) -> str:
        """One line for a terminal or a log: peers, pool size, records in and out, and the
        experiment in progress (number, step, time against its budget) or the latest score."""
        text = (
            f"peers {len(self.peers)}  pool {self.pool_records}  in {self.records_in}  out {self.records_out}"
            f"  rejected {self.rejected}  up {_duration(self.uptime_s)}"
        )
        catchup = self.catchup()
        if catchup is not None:
            text += f"  syncing {catchup[0]}/{catchup[1]}"
        exp = self.experiment
        if exp is not None:
            text += f"  exp {exp['n']} {exp['phase']} step {exp['step']} {_duration(exp['training_s'])}/{_duration(exp['budget_s'])}"
        elif self.finished:
            last = self.finished[-1]
            score = f"val_bpb {last['val_bpb']:.4f}" if last.get("val_bpb") is not None else last["status"]
            text += f"  last exp {last['n']} {score}"
        return text


    def catchup(self) -> tuple[int, int] | None:
        """(records fetched, records expected) over the syncs in progress; None when none is."""
        if not self.syncing:
            return None
        return sum(int(s["fetched"]) for s in self.syncing), sum(int(s["expected"]) for s in self.syncing)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"

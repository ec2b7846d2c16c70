"""Five `p2pgolf join` processes in a ring on loopback: gossip, bursts, late joiners, kill -9.

The ring (each node dials its predecessor, node 0 dials node 4) is sparse: every node has two
neighbours, so a record must be forwarded to reach the far side. Periodic sync is off
(--sync-every 3600), so only gossip can move records between nodes already connected; sync runs
only when a connection is made, which is what a late or restarted node relies on.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from node_procs import P2PGOLF, NodeProc, free_port, make_home, stop_all, wait_until
from records_factory import signed_result

from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(120)
RING = 5
GOSSIP_WINDOW_S = 7.5  # gossip_history (5) heartbeats of 1 s, and a margin for heartbeats late under load


class Ring:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProc] = []
        for i in range(RING):
            home, identity = make_home(root, f"node{i}")
            self.nodes.append(NodeProc(home, identity, port=free_port()))
        self.author = Identity.generate()
        self.seed = 0

    def bootstrap_of(self, i: int) -> list[str]:
        return [self.nodes[(i - 1) % RING].addr]

    def records(self, n: int) -> list[bytes]:
        out = []
        for _ in range(n):
            self.seed += 1
            out.append(signed_result(self.author, seed=self.seed).raw)
        return out

    def counts(self) -> list[int]:
        return [node.pool_count() for node in self.nodes]


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    r = Ring(tmp_path_factory.mktemp("ring"))
    start_all_with_sync_off(r)
    try:
        wait_until(lambda: all(len(n.status()["peers"]) >= 2 for n in r.nodes), 30, what="every ring node to have both neighbours")
        yield r
    finally:
        stop_all(r.nodes)


def start_all_with_sync_off(r: Ring) -> None:
    for i, node in enumerate(r.nodes):
        node.start(r.bootstrap_of(i), "--sync-every", "3600", "--no-peer-exchange")  # the ring stays a ring
    for node in r.nodes:
        node.wait_ready()


def test_record_published_at_one_node_reaches_every_pool_of_a_sparse_ring_within_seconds(ring):
    before = ring.counts()
    (raw,) = ring.records(1)
    started = time.monotonic()
    result = ring.nodes[0].publish([raw])[0]
    assert result["verdict"] == "added"
    wait_until(lambda: [c - b for c, b in zip(ring.counts(), before)] == [1] * RING, 5, what="the record in all five pools")
    assert time.monotonic() - started < 5
    far = ring.nodes[RING // 2].status()
    assert far["records_in"] >= 1 and far["records_in_by_sync"] == 0  # it came by gossip, through a neighbour


def test_burst_of_200_records_all_arrive_in_every_pool_by_gossip(ring):
    before = ring.counts()
    sync_before = [n.status()["records_in_by_sync"] for n in ring.nodes]
    results = ring.nodes[2].publish(ring.records(200))
    assert [r["verdict"] for r in results] == ["added"] * 200
    wait_until(lambda: [c - b for c, b in zip(ring.counts(), before)] == [200] * RING, 30, interval=0.25, what="all 200 records in all five pools")
    assert [n.status()["records_in_by_sync"] for n in ring.nodes] == sync_before  # none of them needed sync


def test_node_started_after_200_records_were_published_gets_all_of_them_by_sync(ring):
    ring.nodes[0].publish(ring.records(200))
    wait_until(lambda: len(set(ring.counts())) == 1, 30, interval=0.25, what="the ring to agree")
    total = ring.counts()[0]
    _outlive_gossip_replay(time.monotonic())  # the last node to receive them caches them from now
    home, identity = make_home(ring.root, "late")
    late = NodeProc(home, identity)
    try:
        late.start([ring.nodes[3].addr], "--sync-every", "3600", "--no-peer-exchange")
        late.wait_ready()
        wait_until(lambda: late.pool_count() == total, 15, interval=0.25, what=f"the late node to hold all {total} records")
        st = late.status()
        assert st["records_in_by_sync"] >= 200
        assert st["rejected"] == 0
    finally:
        late.stop()


def test_publish_command_says_how_many_peers_received_the_record(ring, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    bench = benchmark("smoke")
    run_dir.joinpath("result.json").write_text(json.dumps({
        "bench": bench.id, "bench_name": "smoke", "base": "smoke-tiny", "diff": {}, "seed": 11, "budget_s": 60.0,
        "hw": {"accel": "cpu", "model": "Test CPU", "count": 1, "memory_mib": 2048},
        "metrics": {"val_bpb": 2.4, "val_loss": 1.66, "steps": 12, "train_tokens": 4096, "artifact_bytes": 9000, "eval_tokens": 4096, "eval_partial": False},
        "artifact_sha256": None, "trainer": "test/0", "status": "ok", "parents": [], "note": "",
    }))
    node = ring.nodes[0]
    neighbours = len(node.status()["peers"])
    out = subprocess.run([P2PGOLF, "--home", str(node.home.root), "publish", str(run_dir), "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["via"] == "the running node"
    (result,) = reply["results"]
    assert result["peers"] == neighbours == 2
    record_id = result["id"]
    wait_until(lambda: all(_has(n, record_id) for n in ring.nodes), 10, what="the published run in every pool")


def test_status_and_peers_commands_read_the_running_node(ring):
    node = ring.nodes[1]
    out = subprocess.run([P2PGOLF, "--home", str(node.home.root), "status", "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["peer_id"] == node.identity.peer_id
    assert st["benches"] == ["smoke"]
    out = subprocess.run([P2PGOLF, "--home", str(node.home.root), "peers", "--json"], capture_output=True, text=True, timeout=30)
    peers = {p["peer_id"] for p in json.loads(out.stdout)["peers"]}
    assert {ring.nodes[0].identity.peer_id, ring.nodes[2].identity.peer_id} <= peers


def test_kill_9_node_catches_up_after_restart_while_the_others_kept_delivering(ring):
    from p2pgolf.pool.store import PoolStore

    victim, left, right = ring.nodes[2], ring.nodes[1], ring.nodes[3]
    victim.kill()
    assert victim.proc.returncode == -9
    before = [n.pool_count() for n in (left, right)]
    left.publish(ring.records(20))
    # With node 2 gone the ring is a line 3-4-0-1: the records must go the long way round.
    wait_until(lambda: [n.pool_count() for n in (left, right)] == [b + 20 for b in before], 15, interval=0.25, what="the survivors to deliver around the gap")
    # Gossip may still replay those 20 to the victim's peer id when it returns (py-libp2p keeps
    # up to 100 messages for a peer it has not yet seen go, and its message cache for a few
    # heartbeats, later under load). 30 more that the left node holds but never gossiped (as
    # after `p2pgolf pool import`) can reach the victim by sync alone.
    unsent = ring.records(30)
    with PoolStore(left.home.pool_db) as store:
        assert all(store.add(raw).added for raw in unsent)
    total = left.pool_count()
    _outlive_gossip_replay(time.monotonic())
    victim.start(ring.bootstrap_of(2), "--sync-every", "3600", "--no-peer-exchange")
    victim.wait_ready()
    wait_until(lambda: victim.pool_count() == total, 15, interval=0.25, what="the restarted node to catch up")
    assert victim.status()["records_in_by_sync"] >= len(unsent)
    # Node 3 dials node 2 (its bootstrap) and kept re-dialling with back-off while it was gone.
    wait_until(lambda: right.identity.peer_id in {p["peer_id"] for p in victim.status()["peers"]}, 40, interval=0.5, what="node 3 to re-dial the restarted node")


def _outlive_gossip_replay(delivered_at: float) -> None:
    """py-libp2p replays its message cache (5 heartbeats of 1 s) to a peer that connects; wait
    until the records are older than that in every node's cache, so only sync can bring them.
    `delivered_at`: when the last pool got them (each node caches a message from its arrival,
    and under load the ring can take seconds to deliver)."""
    time.sleep(max(0.0, delivered_at + GOSSIP_WINDOW_S - time.monotonic()))


def _has(node: NodeProc, record_id: str) -> bool:
    from p2pgolf.pool.store import PoolStore

    with PoolStore(node.home.pool_db) as store:
        return store.has(record_id)

"""Ten real `p2pgolf join --no-train` processes, all bootstrapped from node 0, on loopback.

Peer exchange (node/peer_exchange.py, libp2p's Kademlia DHT) must turn the star that bootstrap
makes into a mesh: every node ends with at least 3 direct peers, so killing node 0 (kill -9, by
PID) leaves the other nine connected, a record published afterwards still reaches all nine, and
a node restarted with only dead bootstrap addresses finds its peers again from known_peers.toml.
Every wait is a generous deadline on a condition, never a fixed sleep.
"""

from __future__ import annotations

from collections import deque

import pytest

from node_procs import NodeProc, free_port, make_home, stop_all, wait_until
from records_factory import signed_result

from p2pgolf.node.config import load_known_peers, load_pinned_peers
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(150)
NODES = 10
MIN_DEGREE = 3


def connected(statuses: dict[str, list[str]]) -> bool:
    """Whether the undirected graph peer id -> neighbours (restricted to its keys) is connected."""
    if not statuses:
        return True
    start = next(iter(statuses))
    seen, todo = {start}, deque([start])
    while todo:
        for other in statuses[todo.popleft()]:
            if other in statuses and other not in seen:
                seen.add(other)
                todo.append(other)
    return seen == set(statuses)


def neighbours(nodes: list[NodeProc]) -> dict[str, list[str]]:
    return {n.identity.peer_id: [p["peer_id"] for p in n.status()["peers"]] for n in nodes}


def test_connected_graph_check_sees_a_partition():
    assert connected({"a": ["b"], "b": ["a", "c"], "c": ["b"]})
    assert not connected({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]})


def test_ten_nodes_bootstrapped_from_one_form_a_mesh_that_survives_losing_it(tmp_path):
    nodes = []
    for i in range(NODES):
        home, identity = make_home(tmp_path, f"node{i}")
        nodes.append(NodeProc(home, identity, port=free_port()))
    try:
        nodes[0].start([])
        nodes[0].wait_ready()
        nobody = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{Identity.generate().peer_id}"
        for node in nodes[1:]:
            node.start([nobody, nodes[0].addr])  # several bootstrap addresses, one of them dead
        for node in nodes[1:]:
            node.wait_ready(60)
        wait_until(lambda: min(len(v) for v in neighbours(nodes).values()) >= MIN_DEGREE, 60, interval=1, what=f"every node to have {MIN_DEGREE} peers")
        survivors = nodes[1:]
        assert all(len([p for p in peers if p != nodes[0].identity.peer_id]) >= 1 for peers in neighbours(survivors).values())

        nodes[0].kill()
        wait_until(lambda: all(nodes[0].identity.peer_id not in peers for peers in neighbours(survivors).values()), 30, interval=1, what="the survivors to notice node 0 is gone")
        graph = neighbours(survivors)
        assert connected(graph), graph
        assert min(len(v) for v in graph.values()) >= MIN_DEGREE - 1

        before = [n.pool_count() for n in survivors]
        raw = signed_result(Identity.generate(), seed=1).raw
        assert survivors[0].publish([raw])[0]["verdict"] == "added"
        wait_until(lambda: [n.pool_count() - b for n, b in zip(survivors, before)] == [1] * len(survivors), 30, interval=0.5, what="the record in all nine pools")

        # After first contact the bootstrap peers are not needed: a restart with only dead ones
        # comes back through the peers it learned (known_peers.toml).
        restarted = survivors[-1]
        restarted.stop()
        learned = [a for a in load_known_peers(restarted.home) if a not in load_pinned_peers(restarted.home)]
        assert learned, "it remembered no peer but its bootstrap"  # what it comes back through
        restarted.start([nobody, nodes[0].addr])
        restarted.wait_ready(60)
        wait_until(lambda: len(restarted.status()["peers"]) >= MIN_DEGREE, 60, interval=1, what="the restarted node to find its peers again")
    finally:
        stop_all(nodes)

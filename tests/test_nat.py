"""Two nodes each behind its own NAT and one public node: real `join` processes in network
namespaces this test creates (tests/netns_lab.py: Linux MASQUERADE routers whose firewall drops
unsolicited packets from outside, as a home router's does).

What it proves, in order:
- AutoNAT (node/reachability.py): the public node finds itself public, both NATed nodes private.
- Relay (node/relay.py): the public node serves as a circuit relay, each NATed node reserves a
  slot on it and lists the relay address first among its usable addresses.
- Records through the relay: the public node runs a *different* benchmark, so it neither stores
  nor forwards the NATed nodes' records; a record A holds from the start can only reach B over
  a connection between A and B. The first one is relayed, and B syncs the record at once on
  connecting, while DCUtR waits 2 s before its first attempt.
- Hole punching (DCUtR): both NATs keep the source port (MASQUERADE does while the port is
  free) and filter per endpoint, so simultaneous TCP opens from the listen ports get through and
  A and B end on a direct connection, over which a gossiped record then flows.

Every namespace (with its veths, bridge and iptables rules) and every process is removed at
the end, also when an assertion fails. Skipped, saying why, without root, `ip` or `iptables`.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from netns_lab import PUBLIC_IP, NatLab, missing_requirements
from node_procs import P2PGOLF, NodeProc, make_home, stop_all, wait_until
from records_factory import signed_result

from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(120)
PORT = 4001
REASON = missing_requirements()


@pytest.fixture
def lab():
    if REASON is not None:
        pytest.skip(f"NAT test skipped: {REASON}")
    with NatLab() as made:
        yield made
    assert made.leftovers() == []


def test_two_nodes_behind_nats_exchange_records_through_the_relay_and_end_directly_connected(lab, tmp_path):
    (pub_home, pub_id), (a_home, a_id), (b_home, b_id) = (make_home(tmp_path, n) for n in ("pub", "a", "b"))
    pub = NodeProc(pub_home, pub_id, port=PORT, ip="0.0.0.0", wrap=lab.exec_args("pub"), bench="smoke@30s")
    a = NodeProc(a_home, a_id, port=PORT, ip="0.0.0.0", wrap=lab.exec_args("a"))
    b = NodeProc(b_home, b_id, port=PORT, ip="0.0.0.0", wrap=lab.exec_args("b"))
    nodes = [pub, a, b]
    relay_addr = f"/ip4/{PUBLIC_IP}/tcp/{PORT}/p2p/{pub_id.peer_id}"
    try:
        pub.start([])
        a.start([relay_addr])
        b.start([relay_addr])
        for node in nodes:
            node.wait_ready(60)
        held_by_a = signed_result(Identity.generate(), seed=1).raw
        assert a.publish([held_by_a])[0]["verdict"] == "added"  # no peer of A carries smoke yet

        wait_until(lambda: pub.status()["reachability"] == "public" and pub.status()["relaying"], 30, interval=0.3, what="the public node to find itself reachable and serve as a relay")
        for node in (a, b):
            wait_until(lambda: node.status()["reachability"] == "private" and node.status()["relays"], 30, interval=0.3, what="each NATed node to be private and hold a reservation")
            addrs = node.status()["addrs"]
            assert addrs[0] == f"{relay_addr}/p2p-circuit/p2p/{node.identity.peer_id}", addrs
            assert any(x.startswith("/ip4/198.51.100.") and "/p2p-circuit" not in x for x in addrs), addrs  # the observed public IP
        shown = json.loads(subprocess.run([P2PGOLF, "--home", str(a_home.root), "id", "--json"], capture_output=True, text=True, timeout=30).stdout)
        assert shown["reachability"] == "private" and shown["addrs"][0].endswith(f"/p2p-circuit/p2p/{a_id.peer_id}")

        wait_until(lambda: b.status()["pool_records"] == 1, 30, interval=0.3, what="B to get A's record over their relayed connection")
        # the relayed connection is noted a moment after it opens (node/relay.py), so wait for it
        wait_until(lambda: a_id.peer_id in b.status()["met_through_relay"], 10, interval=0.3, what="B to note its relayed connection to A")
        assert b.status()["records_in_by_sync"] == 1
        assert pub.status()["pool_records"] == 0  # the relay only carried bytes, it holds none

        wait_until(lambda: b_id.peer_id in a.status()["upgraded_to_direct"], 30, interval=0.3, what="A and B to end on a direct (hole-punched) connection")
        wait_until(lambda: b_id.peer_id not in a.status()["relayed_peers"] and a_id.peer_id in b.status()["upgraded_to_direct"], 10, interval=0.3, what="both to see the direct connection")
        gossiped = signed_result(Identity.generate(), seed=2).raw
        assert b.publish([gossiped])[0]["verdict"] == "added"
        wait_until(lambda: a.status()["pool_records"] == 2, 20, interval=0.3, what="A to get B's new record over the direct connection")
    finally:
        for node in nodes:  # all at once: each takes a few seconds to shut down
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        stop_all(nodes)
        for node in nodes:
            node.kill()  # only if SIGTERM did not end it; by its PID
        assert all(n.proc is None or n.proc.poll() is not None for n in nodes)

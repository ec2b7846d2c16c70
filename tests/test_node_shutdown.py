"""Stopping a node leaves nothing behind: no listening or connected socket, no child process,
no control socket file, and no stack trace on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading

import psutil
import pytest
import trio

from node_procs import P2PGOLF, NodeProc, make_home, stop_all, wait_until
from records_factory import signed_result

from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(90)
BENCH = benchmark("smoke")


def _port_is_free(port: int) -> bool:
    """Nothing listens on `port` (closed connections may linger in TIME_WAIT; that is the OS)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _bootstrap_gone(line: str) -> bool:
    return " WARNING p2pgolf.node.discovery: cannot reach bootstrap peer " in line and "Traceback" not in line


def test_sigint_and_sigterm_stop_join_cleanly_leaving_no_socket_or_child(tmp_path):
    home_a, id_a = make_home(tmp_path, "a")
    home_b, id_b = make_home(tmp_path, "b")
    a, b = NodeProc(home_a, id_a), NodeProc(home_b, id_b)
    try:
        a.start([])
        a.wait_ready()
        b.start([a.addr])
        b.wait_ready()
        wait_until(lambda: len(a.status()["peers"]) == 1, 20, what="A and B to connect")
        a.publish([signed_result(Identity.generate()).raw])
        wait_until(lambda: b.pool_count() == 1, 10, what="a record at B")
        for node in (a, b):
            proc = psutil.Process(node.proc.pid)
            listening = [c for c in proc.net_connections() if c.status == psutil.CONN_LISTEN]
            assert [c.laddr.port for c in listening] == [node.port]  # the check below is meaningful
            node.children = proc.children(recursive=True)
            assert home_a.control_socket.exists()

        # A second node on the same home is refused while A runs.
        second = subprocess.run([P2PGOLF, "--home", str(home_a.root), "join", "--bench", "smoke", "--no-train"], capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "already running" in second.stderr and "Traceback" not in second.stderr

        assert a.stop(signal.SIGINT) == 0
        assert b.stop(signal.SIGTERM) == 0
        for node, name in ((a, "SIGINT"), (b, "SIGTERM")):
            assert any(f"received {name}" in line for line in node.lines)
            assert any(line.startswith("stopped: ") for line in node.lines)
            # No stack trace, and none of py-libp2p's chatter about peers. B may say once, in our
            # own words, that its bootstrap A (stopped first) is gone: that is the truth.
            err = "".join(line for line in node.stderr_path.read_text().splitlines(keepends=True) if not _bootstrap_gone(line))
            assert err == "", err
            assert not node.home.control_socket.exists()
            assert _port_is_free(node.port)
            assert not psutil.pid_exists(node.proc.pid) or psutil.Process(node.proc.pid).status() == psutil.STATUS_ZOMBIE
            assert not [c for c in node.children if c.is_running()]
    finally:
        stop_all([a, b])


def test_cancelled_nodes_close_every_socket_they_opened_in_process(tmp_path):
    me = psutil.Process()
    threads_before = {t for t in threading.enumerate() if not t.daemon}

    async def main() -> list[int]:
        stores = [PoolStore(tmp_path / f"p{i}.sqlite") for i in range(3)]
        nodes = [Node(Identity.generate(), s, TrustStore(s), NodeOptions(benches=(BENCH,), control_socket=tmp_path / f"n{i}.sock")) for i, s in enumerate(stores)]
        ports = []
        async with trio.open_nursery() as nursery:
            first = await nursery.start(nodes[0].run)
            for node in nodes[1:]:
                node.options = NodeOptions(benches=(BENCH,), bootstrap=(first.addrs[0],), control_socket=node.options.control_socket)
                await nursery.start(node.run)
            with trio.fail_after(15):
                while len(first.connected_peers()) < 2:
                    await trio.sleep(0.05)
            await first.publish(signed_result(Identity.generate()).raw)
            with trio.fail_after(10):
                while not all(s.count() == 1 for s in stores):
                    await trio.sleep(0.05)
            ports = [int(n.addrs[0].split("/")[4]) for n in nodes]
            open_now = [c for c in me.net_connections() if (c.laddr and c.laddr.port in ports) or (c.raddr and c.raddr.port in ports)]
            assert len(open_now) == 3 + 2 * 2  # three listeners, two connections seen from both ends
            nursery.cancel_scope.cancel()  # what Ctrl-C does to the tree
        return ports

    ports = trio.run(main)
    left = [c for c in me.net_connections() if (c.laddr and c.laddr.port in ports) or (c.raddr and c.raddr.port in ports)]
    assert left == []
    assert not list(tmp_path.glob("n*.sock"))
    assert {t for t in threading.enumerate() if not t.daemon} == threads_before


def test_status_without_a_running_node_says_so_in_one_line(tmp_path):
    home, _ = make_home(tmp_path, "idle")
    out = subprocess.run([P2PGOLF, "--home", str(home.root), "status"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "no node is running" in out.stderr


def test_join_on_a_port_in_use_fails_in_one_line_instead_of_running_deaf(tmp_path):
    home, _ = make_home(tmp_path, "busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([P2PGOLF, "--home", str(home.root), "join", "--bench", "smoke", "--no-train", "--listen", f"/ip4/127.0.0.1/tcp/{port}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr == f"error: listen: cannot listen on /ip4/127.0.0.1/tcp/{port}: port {port} is already in use (another p2pgolf node or program listens there); pick another port with --listen\n"
    assert not home.control_socket.exists()


def test_sigterm_during_a_training_run_leaves_no_trainer_process_behind(tmp_path):
    home, identity = make_home(tmp_path, "trainer")
    node = NodeProc(home, identity, bench="smoke@10s")
    args = [P2PGOLF, "--home", str(home.root), "join", "--bench", "smoke@10s", "--listen", f"/ip4/127.0.0.1/tcp/{node.port}", "--status-every", "3600"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        children: list[psutil.Process] = []

        def training() -> bool:
            children[:] = psutil.Process(proc.pid).children(recursive=True)
            return bool(children)

        wait_until(training, 60, interval=0.2, what="the research loop to start a training run")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "Traceback" not in proc.stderr.read()
        # join returns only after its children are gone (not merely dying of a broken pipe later)
        assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

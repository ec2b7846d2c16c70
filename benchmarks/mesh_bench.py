"""Does a network bootstrapped from one node become a mesh, and does it survive losing that node?

N `p2pgolf join --no-train` processes on loopback, node 0 first and every other node given only
node 0's address (--bootstrap). Measured, from the nodes' control sockets and pool files:
- time to mesh: from the start of nodes 1..N-1 until every node has its target degree
  (min(8, N - 1), node.peer_exchange.MeshSettings) or, at the deadline, what it reached;
- min degree and diameter of the connection graph;
- delivery and p99 propagation (received_ms at a node minus at the origin; one machine, one
  clock) of records published at random nodes, first with node 0 alive (the baseline, same run),
  then after node 0 is killed (kill -9).
Periodic sync is off (--sync-every 3600), so delivery is gossip's alone. Also: each node's CPU
seconds over --idle-s of idle mesh (what keeping the mesh costs) and during each delivery phase,
and the load average, since the machine may be shared.

    .venv/bin/python benchmarks/mesh_bench.py [--nodes 30] [--records 20] [--publish-every 0.2] [--json]
"""

from __future__ import annotations

import json
import os
import platform
import random
import signal
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gossip_bench import cpu_seconds, delivery, make_record, percentile, received_ms  # noqa: E402
from node_procs import NodeProc, free_port, make_home, stop_all, wait_until  # noqa: E402

from p2pgolf.node.peer_exchange import MeshSettings  # noqa: E402
from p2pgolf.protocol.identity import Identity  # noqa: E402

GOAL_MIN_DEGREE = 3


def port_outside_ephemeral_range(rng: random.Random, taken: set[int]) -> int:
    """A free port below the kernel's ephemeral range: ports chosen up front by binding port 0
    are ephemeral ones, which the earlier nodes' outbound connections may take meanwhile (a
    30-node run lost a node to that)."""
    import socket

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, low))
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    return free_port()


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def stop_together(nodes: list[NodeProc]) -> None:
    """SIGTERM every node at once (one by one takes 30 x their shutdown), then reap them."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    for node in nodes:
        if node.proc is None:
            continue
        try:
            node.proc.wait(max(1.0, deadline - time.monotonic()))
        except Exception:
            node.proc.kill()
    stop_all(nodes)  # closes their files; kills nothing that already exited
GOAL_P99_S = 1.0


def graph(nodes: list[NodeProc]) -> dict[str, set[str]]:
    """Peer id -> connected peers among `nodes` (both directions: a connection is mutual)."""
    ids = {n.identity.peer_id for n in nodes}
    out: dict[str, set[str]] = {i: set() for i in ids}
    for n in nodes:
        try:
            peers = [p["peer_id"] for p in n.status()["peers"]]
        except Exception:
            peers = []
        for p in peers:
            if p in ids:
                out[n.identity.peer_id].add(p)
                out[p].add(n.identity.peer_id)
    return out


def diameter(g: dict[str, set[str]]) -> int | None:
    """Longest shortest path; None if the graph is not connected."""
    worst = 0
    for start in g:
        dist = {start: 0}
        todo = deque([start])
        while todo:
            cur = todo.popleft()
            for nxt in g[cur]:
                if nxt not in dist:
                    dist[nxt] = dist[cur] + 1
                    todo.append(nxt)
        if len(dist) < len(g):
            return None
        worst = max(worst, max(dist.values()))
    return worst


def deliver(nodes: list[NodeProc], count: int, rng: random.Random, author: Identity, seed0: int, wait_s: float, every_s: float = 0.2) -> dict:
    """Publish `count` records at random nodes (one every `every_s`); delivery and latency among `nodes`."""
    origin: dict[str, int] = {}
    pids = [node.proc.pid for node in nodes]
    cpu_before, started = cpu_seconds(pids), time.monotonic()
    for k in range(count):
        i = rng.randrange(len(nodes))
        (res,) = nodes[i].publish([make_record(author, seed0 + k)])
        origin[res["id"]] = i
        time.sleep(every_s)
    ids = set(origin)
    deadline = time.monotonic() + wait_s
    seen: list[dict[str, int]] = []
    while time.monotonic() < deadline:
        seen = [received_ms(n, ids) for n in nodes]
        if all(len(s) == len(ids) for s in seen):
            break
        time.sleep(0.5)
    delivered, expected, latencies = delivery(origin, seen)
    phase_s = time.monotonic() - started
    cpu_per_node = (cpu_seconds(pids) - cpu_before) / len(nodes)

    def pct(p: float) -> float | None:
        value = percentile(latencies, p)
        return None if value is None else round(value, 3)

    return {"records": count, "delivery": delivered / expected if expected else None, "p50_s": pct(0.5), "p99_s": pct(0.99), "seconds": round(phase_s, 1), "cpu_s_per_node": round(cpu_per_node, 2), "load": round(os.getloadavg()[0], 1)}


@click.command()
@click.option("--nodes", "n", default=10, show_default=True, type=click.IntRange(4, 30))
@click.option("--records", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--mesh-deadline", default=120.0, show_default=True, help="Seconds to wait for every node's target degree.")
@click.option("--publish-every", default=0.2, show_default=True, type=click.FloatRange(0.01, 60), help="Seconds between published records in each delivery phase.")
@click.option("--idle-s", default=60.0, show_default=True, help="Seconds of idle mesh over which each node's CPU seconds are measured (0: skip).")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(n: int, records: int, mesh_deadline: float, publish_every: float, idle_s: float, seed: int, as_json: bool) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` still stops every node (finally)
    rng = random.Random(seed)
    load_at_start = round(os.getloadavg()[0], 1)
    target = min(MeshSettings().target_degree, n - 1)
    author = Identity.generate()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        root = Path(tmp)
        nodes = []
        port_rng, taken = random.Random(os.getpid()), set()
        for i in range(n):
            home, identity = make_home(root, f"node{i}")
            nodes.append(NodeProc(home, identity, port=port_outside_ephemeral_range(port_rng, taken)))
        try:
            nodes[0].start([], "--sync-every", "3600")
            nodes[0].wait_ready(60)
            started = time.monotonic()
            for node in nodes[1:]:
                node.start([nodes[0].addr], "--sync-every", "3600")
            for node in nodes[1:]:
                node.wait_ready(120)
            all_listening_s = time.monotonic() - started
            progress(f"all {n} listening after {all_listening_s:.1f} s")
            time_to_mesh: float | None = None
            deadline = started + mesh_deadline
            while time.monotonic() < deadline:
                degrees = [len(v) for v in graph(nodes).values()]
                if min(degrees) >= target:
                    time_to_mesh = time.monotonic() - started
                    break
                time.sleep(1)
            g = graph(nodes)
            min_degree, diam = min(len(v) for v in g.values()), diameter(g)
            progress(f"mesh: time {time_to_mesh}, min degree {min_degree}, diameter {diam}")
            idle_cpu = None
            if idle_s > 0:  # nothing published: what keeping the mesh costs each node
                pids = [node.proc.pid for node in nodes]
                before = cpu_seconds(pids)
                time.sleep(idle_s)
                idle_cpu = (cpu_seconds(pids) - before) / n
                g = graph(nodes)
                progress(f"idle {idle_s:g} s: {idle_cpu:.2f} CPU s per node; degrees {sorted(len(v) for v in g.values())}")
            degrees = sorted(len(v) for v in g.values())
            alive = deliver(nodes, records, rng, author, 0, 30, publish_every)
            progress(f"with bootstrap: {alive}")

            nodes[0].kill()
            survivors = nodes[1:]
            gone = nodes[0].identity.peer_id
            wait_until(lambda: all(gone not in {p["peer_id"] for p in s.status()["peers"]} for s in survivors), 60, interval=1, what="the survivors to drop node 0")
            g_after = graph(survivors)
            after = deliver(survivors, records, rng, author, records, 30, publish_every)
            progress(f"after bootstrap loss: {after}")
        finally:
            stop_together(nodes)
    out = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "nodes": n,
        "target_degree": target,
        "all_listening_s": round(all_listening_s, 1),
        "time_to_mesh_s": round(time_to_mesh, 1) if time_to_mesh is not None else None,
        "min_degree": min_degree,
        "max_degree": max(degrees),
        "mean_degree": round(sum(degrees) / len(degrees), 1),
        "idle_s": idle_s,
        "idle_cpu_s_per_node": round(idle_cpu, 2) if idle_cpu is not None else None,
        "diameter": diam,
        "min_degree_after_bootstrap_loss": min(len(v) for v in g_after.values()),
        "diameter_after_bootstrap_loss": diameter(g_after),
        "delivery_with_bootstrap": alive["delivery"],
        "p99_with_bootstrap_s": alive["p99_s"],
        "delivery_after_bootstrap_loss": after["delivery"],
        "p50_after_bootstrap_loss_s": after["p50_s"],
        "p99_after_bootstrap_loss_s": after["p99_s"],
        "cpu_s_per_node_with_bootstrap": alive["cpu_s_per_node"],
        "cpu_s_per_node_after_bootstrap_loss": after["cpu_s_per_node"],
        "cpu_ms_per_record_per_node": round(1000 * (alive["cpu_s_per_node"] + after["cpu_s_per_node"]) / (2 * records), 1),
        "phase_s_with_bootstrap": alive["seconds"],
        "phase_s_after_bootstrap_loss": after["seconds"],
        "load_with_bootstrap": alive["load"],
        "load_after_bootstrap_loss": after["load"],
        "load_at_start": load_at_start,
        "p99_ratio_after_vs_with": round(after["p99_s"] / alive["p99_s"], 2) if after["p99_s"] and alive["p99_s"] else None,
        "records_per_phase": records,
        "publish_every_s": publish_every,
        "goals": {"min_degree": GOAL_MIN_DEGREE, "delivery": 1.0, "p99_s": GOAL_P99_S},
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mesh of {n} join processes bootstrapped from one ({out['machine']})")
    table.add_column("measure")
    table.add_column("bootstrap alive (baseline)", justify="right")
    table.add_column("after kill -9 of bootstrap", justify="right")
    table.add_row("min degree (goal >= 3)", str(min_degree), str(out["min_degree_after_bootstrap_loss"]))
    table.add_row("diameter", str(diam), str(out["diameter_after_bootstrap_loss"]))
    table.add_row("delivery (goal 100%)", f"{alive['delivery']:.1%}", f"{after['delivery']:.1%}")
    table.add_row("p50 s", str(alive["p50_s"]), str(after["p50_s"]))
    table.add_row("p99 s (goal < 1)", str(alive["p99_s"]), f"{after['p99_s']} (x{out['p99_ratio_after_vs_with']})")
    table.add_row("CPU s per node in the phase", f"{alive['cpu_s_per_node']} in {alive['seconds']} s", f"{after['cpu_s_per_node']} in {after['seconds']} s")
    table.add_row("load average after the phase", str(alive["load"]), str(after["load"]))
    Console().print(table)
    click.echo(f"all {n} listening after {out['all_listening_s']} s; every node at degree {target} after {out['time_to_mesh_s']} s; degrees {out['min_degree']}-{out['max_degree']} (mean {out['mean_degree']})")
    if idle_cpu is not None:
        click.echo(f"idle mesh: {out['idle_cpu_s_per_node']} CPU s per node over {idle_s:g} s")


if __name__ == "__main__":
    main()

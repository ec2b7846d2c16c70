"""How well records spread across many node processes, and how fast a new node catches up.

Part 1 (gossip): N `p2pgolf join --no-train` processes on loopback in a sparse random graph
(each node dials its predecessor and one random earlier node). Records are published at random
nodes at a set rate through their control sockets. From every pool file afterwards: delivery
(fraction of (record, other node) pairs that arrived), propagation latency (received_ms at a
node minus received_ms at the origin; one clock, one machine), bytes sent per record per node
(TCP bytes_sent of the nodes' sockets, from `ss`), and CPU seconds per record (all nodes).
Then the rate is raised stage by stage to find the highest that keeps 100% delivery.

Part 2 (catch-up): node A (a join process) holds --catchup records over 24 hour buckets; an
empty node B (in the benchmark's process) connects and syncs; the time runs from the dial. Baseline measured in the same run: a naive full transfer (every id and every
record, as a protocol without summaries would send on each sync) repeated between equal pools,
against the summary sync that moves only a summary when nothing differs.

    .venv/bin/python benchmarks/gossip_bench.py [--nodes 20] [--rate 2] [--duration 15] [--json]
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from node_procs import NodeProc, free_port, make_home, stop_all, wait_until  # noqa: E402

from p2pgolf.protocol.benchmarks import benchmark  # noqa: E402
from p2pgolf.protocol.identity import Identity  # noqa: E402
from p2pgolf.protocol.records import HardwareClass, Metrics, Result  # noqa: E402
from p2pgolf.protocol.signing import sign_record  # noqa: E402

BENCH = benchmark("smoke")
GOAL_P99_S = 1.0
GOAL_CATCHUP_S = 2.0


def make_record(author: Identity, seed: int, created_ms: int | None = None) -> bytes:
    result = Result(
        bench=BENCH.id,
        author=author.public_hex,
        created_ms=created_ms if created_ms is not None else int(time.time() * 1000),
        base="smoke-tiny",
        diff={},
        tokenizer=BENCH.tokenizer,
        hw=HardwareClass("cpu", "Bench CPU", 1, 8192),
        budget_s=BENCH.budget_s,
        seed=seed,
        metrics=Metrics(val_bpb=2.5, val_loss=1.7, steps=100, train_tokens=409600, artifact_bytes=123456, eval_tokens=65536),
        trainer="bench/0",
    )
    return sign_record(result, author.signing_key).raw


# --- part 1: gossip across processes ------------------------------------------------------


def start_network(root: Path, n: int, rng: random.Random) -> list[NodeProc]:
    nodes = []
    for i in range(n):
        home, identity = make_home(root, f"n{i:02d}")
        nodes.append(NodeProc(home, identity, port=free_port()))
    for i, node in enumerate(nodes):
        peers = []
        if i > 0:
            peers.append(nodes[i - 1].addr)
        if i > 1:
            peers.append(nodes[rng.randrange(0, i - 1)].addr)
        node.start(peers, "--sync-every", "3600")
    for node in nodes:
        node.wait_ready(120)
    wait_until(lambda: all(len(node.status()["peers"]) >= 1 for node in nodes), 120, interval=0.5, what="every node to have a peer")
    time.sleep(3)  # a few heartbeats so the gossip mesh forms
    return nodes


def bytes_sent(pids: set[int]) -> int | None:
    """Sum of TCP bytes_sent over the sockets these processes own (Linux `ss`), or None."""
    try:
        out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total, owner = 0, None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            m = re.search(r"pid=(\d+)", line)
            owner = int(m.group(1)) if m else None
            continue
        if owner in pids:
            m = re.search(r"bytes_sent:(\d+)", line)
            if m:
                total += int(m.group(1))
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def received_ms(node: NodeProc, ids: set[str]) -> dict[str, int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{node.home.pool_db}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute("SELECT id, received_ms FROM records").fetchall()
    finally:
        conn.close()
    return {i: ms for i, ms in rows if i in ids}


def delivery(origin: dict[str, int], seen: list[dict[str, int]]) -> tuple[int, int, list[float]]:
    """Records published at node `origin[id]`, and when each node stored them (`seen[j]`: id ->
    ms): (deliveries, deliveries expected, sorted latencies in seconds from the origin's store)."""
    latencies, delivered, expected = [], 0, 0
    for rid, o in origin.items():
        t0 = seen[o].get(rid)
        for j, s in enumerate(seen):
            if j == o:
                continue
            expected += 1
            if rid in s:
                delivered += 1
                if t0 is not None:
                    latencies.append(max(0, s[rid] - t0) / 1000)
    return delivered, expected, sorted(latencies)


def percentile(latencies: list[float], p: float) -> float | None:
    """The p-quantile (0..1) of sorted latencies, by the nearest lower rank; None when empty."""
    return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else None


def run_stage(nodes: list[NodeProc], rate: float, duration: float, rng: random.Random, authors: list[Identity], seed0: int) -> dict:
    pids = [n.proc.pid for n in nodes]
    count = max(1, int(rate * duration))
    cpu0, net0 = cpu_seconds(pids), bytes_sent(set(pids))
    origin: dict[str, int] = {}
    start = time.monotonic()
    for k in range(count):
        target = start + k / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        i = rng.randrange(len(nodes))
        raw = make_record(authors[k % len(authors)], seed0 + k)
        (res,) = nodes[i].publish([raw])
        origin[res["id"]] = i
    publish_s = time.monotonic() - start
    ids = set(origin)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if all(n.pool_count() >= len(ids) + seed0 for n in nodes):
            break
        time.sleep(0.5)
    time.sleep(1)
    cpu1, net1 = cpu_seconds(pids), bytes_sent(set(pids))
    seen = [received_ms(n, ids) for n in nodes]
    delivered, expected, latencies = delivery(origin, seen)

    def pct(p: float) -> float | None:
        return percentile(latencies, p)

    return {
        "rate": rate,
        "records": count,
        "achieved_rate": count / publish_s if publish_s > 0 else rate,
        "delivery": delivered / expected if expected else 1.0,
        "p50_s": pct(0.50),
        "p99_s": pct(0.99),
        "cpu_s_per_record": (cpu1 - cpu0) / count,
        "bytes_per_record_per_node": None if net0 is None or net1 is None else (net1 - net0) / count / len(nodes),
    }


# --- part 2: catch-up of a new node -------------------------------------------------------


def catchup(n_records: int, root: Path) -> dict:
    """Node A (a `p2pgolf join` process) holds n_records; node B (in this process) starts empty,
    connects, and syncs. Then the summary re-sync and the naive full transfer between equal pools."""
    import trio

    from p2pgolf.node.host import parse_peer_addr, peer_info
    from p2pgolf.node.node import Node, NodeOptions
    from p2pgolf.node.sync import MAX_GET, MAX_STARTS, open_sync_stream, request, sync_with
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore

    authors = [Identity.generate() for _ in range((n_records + 499) // 500)]  # under the unknown-key cap
    now = int(time.time() * 1000)
    raws = [make_record(authors[i % len(authors)], i, now - (i % 24) * 3_600_000 - i) for i in range(n_records)]
    home_a, id_a = make_home(root, "catchup-a")
    with PoolStore(home_a.pool_db) as store_a:
        store_a.add_many(raws)
        starts = sorted({bk.start_ms for bk in store_a.summary(BENCH.id)})
    a = NodeProc(home_a, id_a).start([], "--sync-every", "3600")
    store_b = PoolStore(root / "catchup-b.sqlite")
    out: dict = {"catchup_records": n_records}

    async def main() -> None:
        b = Node(Identity.generate(), store_b, TrustStore(store_b), NodeOptions(benches=(BENCH,), sync_interval_s=3600))
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run)
            t0 = time.perf_counter()
            await b.host.connect(peer_info(parse_peer_addr(a.addr)))
            out["connect_s"] = time.perf_counter() - t0
            with trio.fail_after(120):
                while store_b.count() < n_records:
                    await trio.sleep(0.005)
            out["catchup_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = await sync_with(b.host, id_a.peer_id, BENCH.id, store_b, b.admission)
            out["resync_summary_s"] = time.perf_counter() - t0
            out["resync_summary_fetched"] = report.fetched
            # Baseline: what a protocol without summaries sends on every sync.
            t0 = time.perf_counter()
            stream = await open_sync_stream(b.host, id_a.peer_id)
            fetched = 0
            for i in range(0, len(starts), MAX_STARTS):
                reply = await request(stream, {"op": "ids", "bench": BENCH.id, "starts": starts[i : i + MAX_STARTS]})
                ids = reply["ids"]
                for j in range(0, len(ids), MAX_GET):
                    got = await request(stream, {"op": "get", "ids": ids[j : j + MAX_GET]})
                    fetched += len(got["records"])
                    b.admission.admit_batch(got["records"], id_a.peer_id)
            await stream.close()
            out["resync_naive_s"] = time.perf_counter() - t0
            out["resync_naive_fetched"] = fetched
            b.stop()

    try:
        a.wait_ready(60)
        trio.run(main)
    finally:
        a.stop()
        store_b.close()
    return out


# --- command line -------------------------------------------------------------------------


@click.command()
@click.option("--nodes", default=20, show_default=True, help="node processes (at most 20 on a small machine)")
@click.option("--rate", default=2.0, show_default=True, help="records per second published across the network (the goal stage)")
@click.option("--duration", default=15.0, show_default=True, help="seconds each stage publishes for")
@click.option("--search", default="3,5,10,20", show_default=True, help="higher rates to try after the goal stage, stopping at the first below 100%")
@click.option("--catchup", "catchup_records", default=10_000, show_default=True, help="records in the pool a new node catches up with (0: skip)")
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def main(nodes: int, rate: float, duration: float, search: str, catchup_records: int, seed: int, as_json: bool) -> None:
    rng = random.Random(seed)
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "libp2p": _version("libp2p"),
        "load_avg_1m": os.getloadavg()[0],
    }
    result: dict = {"machine": machine, "nodes": nodes, "duration_s": duration}
    authors = [Identity.generate() for _ in range(20)]
    with tempfile.TemporaryDirectory(prefix="gossip-bench-") as tmp:
        root = Path(tmp)
        net = start_network(root, nodes, rng)
        stages = []
        try:
            published = 0
            for r in [rate, *[float(x) for x in search.split(",") if x.strip()]]:
                stage = run_stage(net, r, duration, rng, authors, published)
                published += stage["records"]
                stages.append(stage)
                if stage["delivery"] < 1.0:
                    break
        finally:
            stop_all(net)
        goal = stages[0]
        result.update(
            rate=goal["rate"], delivery=goal["delivery"], p50_s=goal["p50_s"], p99_s=goal["p99_s"],
            cpu_s_per_record=goal["cpu_s_per_record"], bytes_per_record_per_node=goal["bytes_per_record_per_node"],
            stages=stages,
            max_full_delivery_rate=max((s["rate"] for s in stages if s["delivery"] >= 1.0), default=None),
            max_rate_p99_under_goal=max((s["rate"] for s in stages if s["delivery"] >= 1.0 and (s["p99_s"] or 0) < GOAL_P99_S), default=None),
        )
        if catchup_records > 0:
            result.update(catchup(catchup_records, root))
        else:
            result.update(catchup_records=0, catchup_s=None)
    if as_json:
        click.echo(json.dumps(result))
        return
    _table(result)


def _table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = r["machine"]
    console.print(f"machine: {m['platform']}, {m['cpus']} CPUs, load {m['load_avg_1m']:.1f}, python {m['python']}, libp2p {m['libp2p']}")
    console.print(f"settings: {r['nodes']} node processes, sparse random graph, {r['duration_s']:g} s per stage, loopback; catch-up: join process -> in-process node")
    t = Table("measure", "value", "goal / baseline", "ratio")

    def row(name, value, fmt, goal=None, goal_text="", lower_is_better=True):
        if value is None:
            t.add_row(name, "n/a", goal_text, "")
            return
        ratio = "" if goal in (None, 0) else f"{(value / goal):.2f}x" if lower_is_better else f"{(value / goal):.2f}x"
        t.add_row(name, fmt.format(value), goal_text, ratio)

    row(f"delivery at {r['rate']:g} rec/s", r["delivery"], "{:.2%}", 1.0, "goal 100%", lower_is_better=False)
    row("p50 propagation", r["p50_s"], "{:.3f} s")
    row("p99 propagation", r["p99_s"], "{:.3f} s", GOAL_P99_S, f"goal < {GOAL_P99_S:g} s")
    row("bytes sent / record / node", r["bytes_per_record_per_node"], "{:,.0f} B")
    row("CPU / record (all nodes)", r["cpu_s_per_record"], "{:.3f} s")
    for s in r["stages"][1:]:
        row(f"delivery at {s['rate']:g} rec/s (p99 {s['p99_s'] or 0:.2f} s)", s["delivery"], "{:.2%}", 1.0, "goal 100%", lower_is_better=False)
    t.add_row("highest rate with 100% delivery", f"{r['max_full_delivery_rate'] or 0:g} rec/s", f"tried up to {r['stages'][-1]['rate']:g}", "")
    t.add_row(f"highest rate with 100% and p99 < {GOAL_P99_S:g} s", f"{r['max_rate_p99_under_goal'] or 0:g} rec/s", "goal >= 2 rec/s", "")
    if r.get("catchup_s") is not None:
        row(f"catch-up of {r['catchup_records']:,} records", r["catchup_s"], "{:.2f} s", GOAL_CATCHUP_S, f"goal < {GOAL_CATCHUP_S:g} s")
        row("re-sync of equal pools: summary", r["resync_summary_s"], "{:.3f} s", r["resync_naive_s"], f"naive full transfer {r['resync_naive_s']:.2f} s")
    console.print(t)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()

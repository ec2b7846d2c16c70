"""Three p2pgolf nodes on this machine, researching the offline smoke benchmark together.

Starts three `p2pgolf join` processes on 127.0.0.1 (each with its own data directory, so each
has its own identity and pool), B and C bootstrapping from A. Each runs the research loop with a
short training budget. Every few seconds it prints, per node, the pool size, the records received
from peers and the best val_bpb it knows, and the collective best so far. At the end it sends
the nodes Ctrl-C (SIGINT, by the PIDs it started), so each finishes and publishes its current
run, and prints how the collective best improved.

    python examples/three_local_nodes.py --minutes 6 --budget 20

Nothing is downloaded and no traffic leaves 127.0.0.1. The data directories are kept (their
path is printed) so you can look with `p2pgolf --home DIR pool ls` afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

P2PGOLF = [sys.executable, "-m", "p2pgolf.node.cli"]
NAMES = ("A", "B", "C")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="how long the nodes research")
    parser.add_argument("--budget", type=int, default=20, help="training seconds per experiment (benchmark smoke@<budget>s)")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between progress tables")
    parser.add_argument("--root", type=Path, default=None, help="where the three data directories go (default: a new temp dir)")
    args = parser.parse_args()

    console = Console()
    root = args.root or Path(tempfile.mkdtemp(prefix="p2pgolf-three-nodes-"))
    bench = f"smoke@{args.budget}s"
    nodes = [Node(name, root / name, bench) for name in NAMES]
    console.print(f"data directories under {root}; benchmark {bench}; {args.minutes:g} minutes")

    # Each participant creates an identity and pins the keys of the others (in real life: the
    # peers whose results they trust); results from unpinned keys count only a little.
    for node in nodes:
        node.init()
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.cli_checked("trust", "pin", other.public_key, "--label", other.name)

    history: list[tuple[float, float | None]] = []
    start = time.monotonic()
    try:
        nodes[0].start([])
        first = nodes[0].wait_address()
        for node in nodes[1:]:
            node.start([first])
        for node in nodes[1:]:
            node.wait_address()
        for node in nodes:
            console.print(f"node {node.name}: {node.address}")
        deadline = start + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(args.every, max(0.0, deadline - time.monotonic())))
            rows = [node.snapshot() for node in nodes]
            best = min((r["best"] for r in rows if r["best"] is not None), default=None)
            history.append((time.monotonic() - start, best))
            console.print(progress_table(rows, best, time.monotonic() - start))
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        # Ctrl-C to every node at once: each finishes and publishes its current run, then stops.
        for node in nodes:
            node.interrupt()
        for node in nodes:
            node.wait_stopped()
    summary(console, history, nodes)


class Node:
    """One `p2pgolf join` child process and its data directory."""

    def __init__(self, name: str, home: Path, bench: str) -> None:
        self.name, self.home, self.bench = name, home, bench
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None
        self.lines: list[str] = []
        self.public_key = ""

    def init(self) -> None:
        self.cli_checked("init")
        self.public_key = self.cli("id", "--json")["public_key"]

    def cli_checked(self, *args: str) -> None:
        out = subprocess.run([*P2PGOLF, "--home", str(self.home), *args], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise SystemExit(f"node {self.name}: p2pgolf {' '.join(args)} failed: {out.stderr.strip()}")

    def start(self, bootstrap: list[str]) -> None:
        port = free_port()
        cmd = [*P2PGOLF, "--home", str(self.home), "join", "--bench", self.bench, "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--status-every", "3600"]
        for addr in bootstrap:
            cmd += ["--bootstrap", addr]
        log = open(self.home / "join.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("listening: "):
                self.address = line.split(" ", 1)[1].strip()

    def wait_address(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while self.address is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"node {self.name} did not start; see {self.home / 'join.log'}")
            time.sleep(0.2)
        return self.address

    def cli(self, *args: str) -> dict | list | None:
        out = subprocess.run([*P2PGOLF, "--home", str(self.home), *args], capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else None

    def snapshot(self) -> dict:
        status = self.cli("status", "--json") or {}
        records = self.cli("pool", "ls", "--bench", self.bench, "--limit", "0", "--json") or []
        results = [r for r in records if r["kind"] == "result"]
        bpbs = [r["record"]["metrics"]["val_bpb"] for r in records]
        return {
            "name": self.name,
            "pool": len(records),
            "own": sum(1 for r in results if r["author_status"] == "own"),
            "pinned": sum(1 for r in records if r["author_status"] == "pinned"),
            "attestations": sum(1 for r in records if r["kind"] == "attestation"),
            "from_peers": status.get("records_in", 0),
            "peers": len(status.get("peers", [])),
            "best": min(bpbs) if bpbs else None,
        }

    def interrupt(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the same as Ctrl-C: finish the current run, then stop

    def wait_stopped(self, finish_s: float = 180.0) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(finish_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)  # abandon the run in progress
            self.proc.wait(60)


def progress_table(rows: list[dict], best: float | None, elapsed: float) -> Table:
    table = Table(title=f"after {elapsed:.0f} s: collective best val_bpb {fmt(best)}", title_justify="left")
    for column in ("node", "peers", "pool records", "own results", "attestations", "from pinned peers", "received from peers", "best val_bpb known"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["name"], str(r["peers"]), str(r["pool"]), str(r["own"]), str(r["attestations"]), str(r["pinned"]), str(r["from_peers"]), fmt(r["best"]))
    return table


def summary(console: Console, history: list[tuple[float, float | None]], nodes: list[Node]) -> None:
    table = Table(title="collective best over time", title_justify="left")
    table.add_column("elapsed s", justify="right")
    table.add_column("best val_bpb", justify="right")
    last = None
    for elapsed, best in history:
        if best != last:
            table.add_row(f"{elapsed:.0f}", fmt(best))
            last = best
    console.print(table)
    for node in nodes:
        console.print(f"node {node.name}: {' | '.join(node.lines[-1:])}  (log: {node.home / 'join.log'})")
    if nodes and nodes[0].public_key:
        top = subprocess.run([*P2PGOLF, "--home", str(nodes[0].home), "pool", "top", "--bench", nodes[0].bench, "--limit", "5"], capture_output=True, text=True, timeout=120)
        console.print(f"node A's view (p2pgolf --home {nodes[0].home} pool top --bench {nodes[0].bench}):")
        console.print(top.stdout.rstrip() or top.stderr.strip(), markup=False, highlight=False)


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()

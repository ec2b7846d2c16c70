"""Run real `p2pgolf join` processes on loopback for the node tests (plain helpers, no fixtures).

Each node gets its own home (identity, pool, trust store), a free port chosen up front so that
a whole topology can start at once, and is reached through its real control socket. Every wait
has a deadline; `stop` and `kill` act only on the PID this helper started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from p2pgolf.node.control import request
from p2pgolf.node.home import Home
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.identity import Identity, create_identity

P2PGOLF = str(Path(sys.executable).with_name("p2pgolf"))


def make_home(root: Path, name: str) -> tuple[Home, Identity]:
    """A fresh initialised home under `root` (as `p2pgolf init` makes it)."""
    home = Home(root / name)
    home.root.mkdir(parents=True, mode=0o700)
    identity = create_identity(home.key_file)
    with TrustStore(home.pool_db) as trust:
        trust.set_own(identity.public_hex)
    return home, identity


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class NodeProc:
    """One `p2pgolf join --no-train` process (with `train=True`, one that runs the research loop)."""

    def __init__(self, home: Home, identity: Identity, *, port: int | None = None, bench: str = "smoke", train: bool = False, ip: str = "127.0.0.1", wrap: list[str] = ()) -> None:
        self.home = home
        self.ip = ip  # the address it listens on
        self.wrap = list(wrap)  # a command prefix, e.g. `ip netns exec NS` (tests/netns_lab.py)
        self.train = train  # run the research loop (no --no-train)
        self.identity = identity
        self.port = port or free_port()
        self.bench = bench
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def addr(self) -> str:
        return f"/ip4/{self.ip}/tcp/{self.port}/p2p/{self.identity.peer_id}"

    def start(self, bootstrap: list[str] = (), *extra: str) -> "NodeProc":
        args = [*self.wrap, P2PGOLF, "--home", str(self.home.root), "join", "--bench", self.bench, *([] if self.train else ["--no-train"]), "--listen", f"/ip4/{self.ip}/tcp/{self.port}", "--status-every", "3600", "--sync-every", "5", *extra]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        self.lines = []
        self.stderr_path = self.home.root / "join.err"
        self._stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_ready(self, timeout: float = 30.0) -> "NodeProc":
        wait_until(lambda: any(l.startswith("listening: ") for l in self.lines) or self.proc.poll() is not None, timeout, what=f"{self.home.root.name} to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.home.root.name} exited with {self.proc.returncode}: {self.stderr_path.read_text()[-2000:]}")
        return self

    def status(self) -> dict:
        return request(self.home.control_socket, {"op": "status"}, timeout=10)["status"]

    def pool_count(self) -> int:
        return self.status()["pool_records"]

    def publish(self, raws: list[bytes], confirm_s: float = 0.0) -> list[dict]:
        return request(self.home.control_socket, {"op": "publish", "records": [r.hex() for r in raws], "confirm_s": confirm_s}, timeout=60)["results"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the process and wait for it; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.home.root.name} did not stop within {timeout:g} s after {signal.Signals(sig).name}")
        self._finish()
        return code

    def kill(self) -> None:
        """kill -9: no clean-up at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._finish()

    def _finish(self) -> None:
        if self._reader is not None:
            self._reader.join(5)
        self._stderr.close()


def start_all(nodes: list[NodeProc], bootstraps: list[list[str]], timeout: float = 40.0) -> None:
    """Start every node at once (ports are fixed up front) and wait until all listen."""
    for node, peers in zip(nodes, bootstraps):
        node.start(peers)
    for node in nodes:
        node.wait_ready(timeout)


def stop_all(nodes: list[NodeProc]) -> None:
    for node in nodes:
        try:
            node.stop()
        except AssertionError:
            pass


def descendants_running(pid: int, needle: str) -> list:
    """The live descendants of `pid` whose command line contains `needle`. A child that exits
    between listing and reading its command line (a zombie, gone) is skipped, not an error."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if needle in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return found

"""Ctrl-C on a real `p2pgolf join` with a training run in progress: by default the run is
finished, signed, stored and published before the node stops, and no other experiment starts;
with --on-interrupt abandon, on a second Ctrl-C or on SIGTERM, the trainer is stopped at once,
the journal marks the run abandoned, and a restart goes on with the next experiment instead of
training it again. Ctrl-C is sent to join's process group, as a terminal does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import psutil
import pytest
from click.testing import CliRunner

from node_procs import P2PGOLF, descendants_running, free_port, make_home, wait_until

from p2pgolf.node.cli import cli
from p2pgolf.node.commands.join_cmd import DUPLICATE_SIGINT_S
from p2pgolf.node.home import Home
from p2pgolf.node.research_loop import Journal
from p2pgolf.pool.store import PoolStore

pytestmark = pytest.mark.timeout(180)


class Join:
    """One `p2pgolf join` that trains (its own session, so Ctrl-C can go to its process group)."""

    def __init__(self, home: Home, bench: str, *extra: str) -> None:
        args = [P2PGOLF, "--home", str(home.root), "join", "--bench", bench, "--eval-tokens", "4096", "--listen", f"/ip4/127.0.0.1/tcp/{free_port()}", "--status-every", "3600", *extra]
        self.stderr_path = home.root / f"join-{time.monotonic_ns()}.err"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)  # the whole foreground group, as a terminal does

    def trainer(self, timeout: float = 60.0) -> psutil.Process:
        """The training child, once the research loop has started one."""
        found: list[psutil.Process] = []

        def started() -> bool:
            assert self.proc.poll() is None, f"join exited with {self.proc.returncode}: {self.stderr_path.read_text()[-2000:]}"
            found[:] = descendants_running(self.proc.pid, "p2pgolf.trainer.runner")
            return bool(found)

        wait_until(started, timeout, interval=0.1, what="the research loop to start a training run")
        return found[0]

    def wait_line(self, needle: str, timeout: float = 10.0) -> str:
        wait_until(lambda: any(needle in line for line in self.lines), timeout, what=f"a line with {needle!r}")
        return next(line for line in self.lines if needle in line)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        self._stderr.close()
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _journal(home: Home) -> Journal:
    return Journal(home.root / "research" / "journal.jsonl")


def _starts(home: Home) -> list[int]:
    lines = (home.root / "research" / "journal.jsonl").read_text().splitlines()
    return [e["n"] for e in map(json.loads, lines) if e["event"] == "start"]


def test_ctrl_c_finishes_the_run_in_progress_publishes_it_and_starts_no_other(tmp_path):
    home, identity = make_home(tmp_path, "finish")
    join = Join(home, "smoke@3s")  # --on-interrupt finish is the default
    try:
        assert "Ctrl-C finishes the current run" in join.wait_line("running the research loop", 60)
        trainer = join.trainer()
        join.ctrl_c()
        told = join.wait_line("finishing experiment 0")
        assert "at most" in told and "Ctrl-C again to abandon it" in told
        assert join.wait(120) == 0
        assert join.stderr() == ""
        done = join.wait_line("experiment 0 finished and published")
        assert _gone(trainer)
    finally:
        join.kill()

    assert _starts(home) == [0]  # no further experiment was started
    (end,) = _journal(home).ends()
    assert end["status"] == "ok" and end["record"][:12] in done
    with PoolStore(home.pool_db) as store:
        record = store.get(end["record"])
        assert record is not None and record.author == identity.public_hex
    (run_dir,) = list(home.runs_dir.iterdir())
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"


def test_abandon_a_second_ctrl_c_and_sigterm_stop_the_trainer_at_once_and_restarts_move_on(tmp_path):
    home, _ = make_home(tmp_path, "abandon")
    join = Join(home, "smoke@60s", "--on-interrupt", "abandon")
    try:
        assert "Ctrl-C abandons the current run" in join.wait_line("running the research loop", 60)
        trainer = join.trainer()
        join.ctrl_c()
        wait_until(lambda: _gone(trainer), 5, interval=0.05, what="the trainer to be stopped")
        assert join.wait(60) == 0
        assert join.stderr() == ""
        join.wait_line("abandoning experiment 0")
        join.wait_line("experiment 0 was abandoned")
    finally:
        join.kill()
    assert [e["status"] for e in _journal(home).ends()] == ["abandoned"]
    (first_dir,) = list(home.runs_dir.iterdir())
    first_result = (first_dir / "result.json").read_text()
    assert json.loads(first_result)["status"] == "abandoned"

    # Restart with the default (finish): the next experiment is number 1, in a new run directory;
    # a second Ctrl-C abandons it.
    join = Join(home, "smoke@60s")
    try:
        trainer = join.trainer()
        assert re.search(r"exp-00001-[0-9a-f]{8}", " ".join(trainer.cmdline()))
        join.ctrl_c()
        join.wait_line("finishing experiment 1")
        time.sleep(DUPLICATE_SIGINT_S + 0.2)  # a second SIGINT sooner is the same Ctrl-C (a forwarding wrapper's copy)
        join.ctrl_c()
        wait_until(lambda: _gone(trainer), 5, interval=0.05, what="the trainer to be stopped by the second Ctrl-C")
        assert join.wait(60) == 0
        assert join.stderr() == ""
        join.wait_line("abandoning experiment 1")
    finally:
        join.kill()
    # SIGTERM (a service manager stopping us) abandons at once even where Ctrl-C would finish.
    join = Join(home, "smoke@60s")
    try:
        trainer = join.trainer()
        join.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _gone(trainer), 5, interval=0.05, what="the trainer to be stopped by SIGTERM")
        assert join.wait(60) == 0
        join.wait_line("received SIGTERM: abandoning experiment 2")
        assert not any("finishing" in line for line in join.lines)
    finally:
        join.kill()
    assert _starts(home) == [0, 1, 2]
    assert [e["status"] for e in _journal(home).ends()] == ["abandoned"] * 3
    assert (first_dir / "result.json").read_text() == first_result  # experiment 0 was not touched


def test_join_help_shows_what_ctrl_c_does():
    result = CliRunner().invoke(cli, ["join", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--on-interrupt [finish|abandon]" in text and "[default: finish]" in text
    assert "a second Ctrl-C abandons it" in text and "SIGTERM always abandons" in text


def test_join_with_an_experiment_count_stops_researching_after_it_and_keeps_relaying(tmp_path):
    from p2pgolf.node.control import request

    home, identity = make_home(tmp_path, "counted")
    join = Join(home, "smoke@2s", "--experiments", "1")
    try:
        join.wait_line("running the research loop", 60)
        wait_until(lambda: len(_journal(home).ends()) == 1, 120, interval=0.2, what="the one experiment to end")
        time.sleep(3.0)  # room for a second experiment to start, if the count were ignored
        assert _starts(home) == [0]
        assert join.proc.poll() is None  # still relaying
        status = request(home.control_socket, {"op": "status"}, timeout=10)["status"]
        assert status["pool_records"] == 1
        join.ctrl_c()
        assert join.wait(60) == 0
    finally:
        join.kill()
    (end,) = _journal(home).ends()
    assert end["status"] == "ok"

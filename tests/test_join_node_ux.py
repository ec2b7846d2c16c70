"""What a running `p2pgolf join` tells its user, on real processes over loopback: an unanswered
--bootstrap peer gets one warning line (and is retried), `p2pgolf stop` stops the node and waits
for it, `status --json` and the plain lines carry the experiment in progress and each finished
result, a signal-forwarding wrapper's duplicate SIGINT counts as one Ctrl-C, and SIGINTs after
the stop never cut the shutdown short. `publish` exits 1 in one line when no peer received
its record, whether the known peer is down or no peer is known."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from node_procs import P2PGOLF, NodeProc, free_port, make_home, wait_until
from test_join_interrupt import Join, _journal

from p2pgolf.node.commands.join_cmd import DUPLICATE_SIGINT_S
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[1]


def cli(home, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80"}
    return subprocess.run([P2PGOLF, *args, "--home", str(home.root)], capture_output=True, text=True, timeout=timeout, env=env)


def test_an_unanswered_bootstrap_gives_one_warning_is_retried_and_stop_waits_for_the_node(tmp_path):
    home, _ = make_home(tmp_path, "lonely")
    nobody = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{Identity.generate().peer_id}"
    node = NodeProc(home, _).start([nobody])
    try:
        node.wait_ready()
        wait_until(lambda: "cannot reach bootstrap peer" in node.stderr_path.read_text(), 30, what="the warning")
        time.sleep(4)  # back-off 1 s, 2 s: a few more dials fail meanwhile
        warnings = [line for line in node.stderr_path.read_text().splitlines() if line.strip()]
        assert len(warnings) == 1 and "WARNING" in warnings[0], warnings
        assert nobody in warnings[0] and "retrying" in warnings[0]
        status = json.loads(cli(home, "status", "--json").stdout)
        assert status["peers"] == [] and status["experiment"] is None and status["finished"] == []

        stopped = cli(home, "stop")
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.strip().splitlines()[-1] == "stopped"
        assert node.proc.poll() == 0  # `stop` returned only once the process had ended
        assert node.lines[-1].startswith("stopped: ")
        assert not home.control_socket.exists()
    finally:
        node.kill()


def test_status_and_plain_lines_carry_the_experiment_and_each_finished_result(tmp_path):
    home, _ = make_home(tmp_path, "research")
    join = Join(home, "smoke@3s", "--experiments", "1")
    try:
        join.wait_line("running the research loop", 60)
        seen: dict = {}

        def training() -> bool:
            st = json.loads(cli(home, "status", "--json").stdout)
            seen.update(st["experiment"] or {})
            return bool(st["experiment"])

        wait_until(training, 60, interval=0.3, what="status to show the experiment")
        assert seen["n"] == 0 and seen["operator"] and re.fullmatch(r"[0-9a-f]{64}", seen["candidate"])
        assert seen["base"] and isinstance(seen["diff"], dict) and seen["budget_s"] == 3
        assert seen["phase"] in ("starting", "loading", "training", "exporting", "evaluating", "done")
        started = join.wait_line("experiment 0: ")
        assert seen["candidate"][:12] in started and seen["operator"] in started and seen["base"] in started

        def finished() -> list:
            return json.loads(cli(home, "status", "--json").stdout)["finished"]

        wait_until(lambda: bool(finished()), 120, interval=0.5, what="the experiment to finish")
        (done,) = finished()
        (end,) = _journal(home).ends()
        assert done["status"] == "ok" and done["candidate"] == seen["candidate"] and done["record"] == end["record"]
        assert done["val_bpb"] > 0 and done["steps"] >= 1
        line = join.wait_line("experiment 0 finished: ")
        assert f"val_bpb {done['val_bpb']:.4f} after {done['steps']} steps" in line and end["record"][:12] in line
        table = cli(home, "status").stdout
        assert max(map(len, table.splitlines())) <= 80
        assert "finished 0" in table and f"val_bpb {done['val_bpb']:.4f}, {done['steps']} steps" in table
        assert cli(home, "stop").returncode == 0
        assert join.wait(60) == 0
    finally:
        join.kill()


def test_a_duplicated_sigint_is_one_ctrl_c_and_later_ones_never_cut_the_shutdown_short(tmp_path):
    home, _ = make_home(tmp_path, "wrapped")
    join = Join(home, "smoke@60s")
    try:
        join.trainer()
        join.ctrl_c()
        join.ctrl_c()  # the wrapper's copy of the same Ctrl-C, a moment later
        join.wait_line("finishing experiment 0")
        time.sleep(DUPLICATE_SIGINT_S + 0.5)
        assert join.proc.poll() is None and not any("abandoning" in line for line in join.lines)
        assert sum("received SIGINT" in line for line in join.lines) == 1
        join.ctrl_c()  # a real second Ctrl-C: abandon
        sent = 0
        while join.proc.poll() is None and sent < 200:  # and more, all through the shutdown and the exit
            time.sleep(0.05)
            try:
                join.ctrl_c()
            except ProcessLookupError:
                break
            sent += 1
        assert sent >= 1
        assert join.wait(60) == 0
        assert join.stderr() == ""
        join.wait_line("abandoning experiment 0")
        assert join.lines[-1].startswith("stopped: ")
    finally:
        join.kill()
    assert [e["status"] for e in _journal(home).ends()] == ["abandoned"]


def test_stop_abandon_drops_the_run_in_progress_and_returns_once_the_node_has_stopped(tmp_path):
    home, _ = make_home(tmp_path, "stopped")
    join = Join(home, "smoke@60s")
    try:
        join.trainer()
        proc = cli(home, "stop", "--abandon", "-v")  # -v, a global option, after the subcommand
        assert proc.returncode == 0, proc.stderr
        assert join.proc.poll() == 0
        join.wait_line("asked to stop: abandoning experiment 0")
        assert join.lines[-1].startswith("stopped: ")
    finally:
        join.kill()
    assert [e["status"] for e in _journal(home).ends()] == ["abandoned"]


def _run_dir(tmp_path) -> Path:
    from test_node_publishing import run_json

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps(run_json()))
    return run_dir


def test_publish_to_a_peer_that_is_down_exits_1_in_one_line_without_libp2p_noise(tmp_path):
    home, _ = make_home(tmp_path, "publisher")
    down = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{Identity.generate().peer_id}"
    proc = subprocess.run([P2PGOLF, "--home", str(home.root), "publish", str(_run_dir(tmp_path)), "--bootstrap", down, "--timeout", "3"], capture_output=True, text=True, timeout=90)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no peer received 1 of 1 record(s)"), proc.stderr
    assert "kept in the local pool" in lines[0]


def test_publish_through_a_running_node_without_peers_exits_1_too(tmp_path):
    home, identity = make_home(tmp_path, "relay")
    node = NodeProc(home, identity).start()
    try:
        node.wait_ready()
        proc = subprocess.run([P2PGOLF, "--home", str(home.root), "publish", str(_run_dir(tmp_path)), "--timeout", "2"], capture_output=True, text=True, timeout=90)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "via the running node: 0 peer(s) received it" in proc.stdout
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no peer received"), proc.stderr
        assert node.pool_count() == 1
    finally:
        node.stop()


def test_the_status_line_shows_the_experiment_in_progress_or_the_latest_score():
    from p2pgolf.node.status import NodeStatus

    base = dict(peer_id="p", addrs=(), benches=("smoke",), peers=(), pool_records=3, records_in=0, records_in_by_sync=0,
                records_out=1, rejected=0, gossip_received=0, syncs=0, uptime_s=75, worker="running")
    running = {"n": 4, "phase": "training", "step": 120, "training_s": 42.0, "budget_s": 60.0}
    assert NodeStatus(**base, experiment=running).line().endswith("exp 4 training step 120 42s/1m00s")
    done = ({"n": 3, "val_bpb": 1.23456, "status": "ok"},)
    assert NodeStatus(**base, finished=done).line().endswith("last exp 3 val_bpb 1.2346")
    failed = ({"n": 3, "val_bpb": None, "status": "oversize"},)
    assert NodeStatus(**base, finished=failed).line().endswith("last exp 3 oversize")
    assert NodeStatus.from_json(NodeStatus(**base, experiment=running, finished=done).to_json()).finished == done

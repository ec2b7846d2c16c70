"""join's live view on a real terminal: a real `p2pgolf join` in a tmux pane (a pseudo-
terminal), a second real node that relays a better record to it, and Ctrl-C typed into the
pane. The screen is read back with `tmux capture-pane`. Then `p2pgolf report` runs on the pool
those real records made."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from node_procs import P2PGOLF, NodeProc, free_port, make_home, wait_until
from p2pgolf.pool.trust import TrustStore

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is needed to give join a real terminal (apt-get install tmux)")

BENCH = "smoke@15s"
HOSTILE_LABEL = "[link=http://e.x]m[/]"  # rich markup: must show exactly as typed
BETTER_BPB = 1.2345
COLUMNS, LINES = 110, 50


class Pane:
    """One tmux pane on a private tmux server (its own socket: nobody else's sessions)."""

    def __init__(self, command: str, cwd: Path) -> None:
        self.socket = f"p2pgolf-test-{os.getpid()}-{time.monotonic_ns()}"
        self._tmux("new-session", "-d", "-s", "live", "-x", str(COLUMNS), "-y", str(LINES), "-c", str(cwd), command)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "live", "-S", "-200").stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "live", *keys)

    def wait_for(self, pattern: str, timeout: float, what: str) -> re.Match:
        found: list[re.Match] = []

        def seen() -> bool:
            m = re.search(pattern, self.screen())
            if m:
                found.append(m)
            return m is not None

        try:
            wait_until(seen, timeout, interval=0.3, what=what)
        except AssertionError:
            raise AssertionError(f"{what}; the screen was:\n{self.screen()}") from None
        return found[-1]

    def close(self) -> None:
        self._tmux("kill-server", check=False)

    def _tmux(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=check, timeout=20)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Run the whole scene once; the tests below read what it saw."""
    root = tmp_path_factory.mktemp("live")
    home, me = make_home(root, "a")
    relay_home, relay_id = make_home(root, "b")
    stranger_home, stranger = make_home(root, "c")
    with TrustStore(home.pool_db) as trust:
        trust.pin(stranger.public_hex, label=HOSTILE_LABEL)
    port = free_port()
    relay = NodeProc(relay_home, relay_id, bench=BENCH).start([f"/ip4/127.0.0.1/tcp/{port}/p2p/{me.peer_id}"]).wait_ready()
    env = f"PYTHONPATH={os.environ.get('PYTHONPATH', '')} PYTHONUNBUFFERED=1 TERM=xterm-256color COLUMNS={COLUMNS} LINES={LINES}"
    command = (f"env {env} {P2PGOLF} --home {home.root} join --bench {BENCH} --eval-tokens 2048 --experiments 1"
               f" --listen /ip4/127.0.0.1/tcp/{port} --sync-every 2 2>{root / 'a.err'}; echo EXIT=$?; sleep 120")  # fmt: skip
    pane = Pane(command, Path(__file__).resolve().parents[1])
    seen: dict = {"home": home, "me": me}
    try:
        first = pane.wait_for(r"(\d+)s/15s training", 60, "the progress bar of experiment 0")
        seen["first_progress"] = int(first.group(1))
        shown: list[int] = []

        def advanced() -> bool:
            shown.extend(int(m) for m in re.findall(r"(\d+)s/15s training", pane.screen()))
            return bool(shown) and max(shown) > seen["first_progress"]

        wait_until(advanced, 30, interval=0.3, what="the progress bar to advance")
        seen["later_progress"] = max(shown)
        seen["before_better"] = pane.screen()
        wait_until(lambda: relay.status()["peers"], 30, what="the relay to connect to the live node")
        relay.publish([_better_record(stranger, BENCH).raw])
        pane.keys("C-c")  # at once, so the run is surely still in progress on a slow machine
        pane.wait_for(r"received SIGINT: finishing experiment 0", 30, "join to say it finishes the run")
        pane.wait_for(rf"collective\s+│\s+{BETTER_BPB:.4f}", 30, "the collective best to show the better record")
        seen["after_better"] = pane.screen()
        pane.wait_for(r"EXIT=\d+", 120, "join to stop after Ctrl-C")
        seen["final"] = pane.screen()
        seen["stderr"] = (root / "a.err").read_text()
        yield seen
    finally:
        pane.close()
        relay.stop()


def _better_record(who, bench_name: str):
    from p2pgolf.trainer.hardware import detect_hardware

    from records_factory import signed_result

    return signed_result(who, bench=bench_name, diff={"num_layers": 3}, val_bpb=BETTER_BPB, hw=detect_hardware())


def test_progress_bar_advances_against_the_budget(session):
    assert session["later_progress"] > session["first_progress"]
    screen = session["before_better"]
    assert "experiment 0:" in screen and "tokens/s" in screen and "why:" in screen and "━" in screen


def test_collective_best_updates_when_a_better_record_arrives(session):
    before, after = session["before_better"], session["after_better"]
    assert f"{BETTER_BPB:.4f}" not in before
    assert "finishing experiment 0" in after, "the view goes on while the run finishes"
    assert re.search(rf"collective\s+│\s+{BETTER_BPB:.4f} ± \d\.\d{{4}}", after)
    assert re.search(r"peers 1\b", after)


def test_peer_label_markup_shows_as_typed(session):
    assert HOSTILE_LABEL in session["after_better"]


def test_ctrl_c_finishes_the_run_then_stops(session):
    final = session["final"]
    assert "received SIGINT: finishing experiment 0" in final, final
    assert re.search(r"experiment 0 finished and published \(record [0-9a-f]{12}\); shutting down", final), final
    assert re.search(r"stopped: peers .* last exp 0 val_bpb \d+\.\d{4}", final), final
    assert "EXIT=0" in final
    assert "Traceback" not in final + session["stderr"]


def test_report_from_the_real_records(session, tmp_path):
    from click.testing import CliRunner

    from p2pgolf.node.cli import cli

    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(cli, ["--home", str(session["home"].root), "report", "--out", str(tmp_path), "--bench", BENCH])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    assert "1.2345" in page and "you" in page and "[link=http://e.x]m[/]" in page
    assert (tmp_path / "best_over_time.png").exists()

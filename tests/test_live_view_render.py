"""The live view's frame (node/views/live.py) at several widths, the reasons it gives, and
join's --quiet and --log on a real process whose stdout is a pipe."""

from __future__ import annotations

import io
import re
import signal
import subprocess

import pytest
from rich.console import Console

from p2pgolf.node.status import NodeStatus, PeerStatus
from p2pgolf.node.views.live import PoolWatch, Screen, render
from p2pgolf.node.views.pool_rows import Row
from p2pgolf.node.views.reason import proposal_reason
from p2pgolf.pool.proposals import Proposal

OWN, PEER = "a" * 64, "b" * 64
HW = "cpu:Test CPU:x2"


def _status(**extra) -> NodeStatus:
    experiment = {"n": 3, "operator": "mutate", "candidate": "c" * 64, "base": "smoke-tiny", "diff": {"matrix_lr": 0.05}, "why": "moves matrix_lr=0.05 from record 1234abcd",
                  "phase": "training", "step": 42, "train_loss": 3.21, "elapsed_s": 20.0, "training_s": 15.0, "budget_s": 60.0, "deadline_s": 360.0,
                  "remaining": "training, about 45s of its 1m00s budget left"}  # fmt: skip
    fields = dict(peer_id="12D3KooW", addrs=(), benches=("smoke",), peers=(PeerStatus("p", (), (), 0),), pool_records=7, records_in=4, records_in_by_sync=1, records_out=3,
                  rejected=2, gossip_received=4, syncs=1, uptime_s=75.0, worker="running", experiment=experiment)  # fmt: skip
    return NodeStatus(**{**fields, **extra})


def _watch(label: str = "[link=http://evil.example]eve[/]") -> PoolWatch:
    watch = PoolWatch(own_key=OWN, hw=HW, labels={PEER: label})
    rows = [
        Row("1" * 64, "result", OWN, 1, 1, HW, 2.50, candidate="d" * 64, base="smoke-tiny"),
        Row("2" * 64, "result", OWN, 2, 2, HW, 2.52, candidate="d" * 64, base="smoke-tiny"),
        Row("3" * 64, "result", PEER, 3, 3, HW, 2.40, candidate="e" * 64, base="smoke-tiny", note="[bold]x[/]"),
    ]
    watch.rows = rows
    watch.recent_out.extend(rows[:2])
    watch.recent_in.append(rows[2])
    watch.bests = watch._bests()
    return watch


def _text(width: int, screen: Screen) -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None, force_terminal=True)
    console.print(render(screen, width))
    return console.export_text()


@pytest.mark.parametrize("width", [40, 60, 80, 120])
def test_frame_fits_the_terminal_and_shows_the_run_and_the_bests(width):
    text = _text(width, Screen(_status(), 1234.0, _watch()))
    assert all(len(line) <= width for line in text.splitlines()), text
    flat = " ".join(text.split())
    for fact in ("experiment 3", "step 42", "loss 3.2100", "1,234 tokens/s", "rejected 2", "pool 7", "peers 1"):
        assert fact in flat, (fact, text)
    assert "15s/1m00s" in flat
    assert re.search(r"this node .*2\.5100 ± \d\.\d{4}", flat), text  # mean of its two runs
    assert re.search(r"collective .*2\.4000 ± \d\.\d{4}", flat), text
    if width >= 80:
        assert "why: moves matrix_lr=0.05" in flat and HW in flat


def test_runs_trusted_peers_announce_are_shown_as_typed_and_fit():
    run = {"author": PEER, "peer_id": "12D3KooWPeerRunningNow", "bench": "smoke", "hw": HW, "candidate": "f" * 64, "base": "smoke-tiny",
           "diff": {"num_layers": 3, "note_like": "[bold]x[/]"}, "tokenizer": "byte256", "running_s": 12.0, "expires_in_s": 300.0}  # fmt: skip
    for width in (40, 120):
        text = _text(width, Screen(_status(peers_running=(run,) * 6), 0.0, _watch()))
        assert all(len(line) <= width for line in text.splitlines()), text
        assert text.count("peer 12D3KooWPeerRunn") == 4  # at most PEERS_RUNNING_SHOWN lines
    assert "runs ffffffffffff = smoke-tiny num_layers=3 note_like=[bold]x[/]" in text


def test_peer_label_is_shown_as_typed_not_as_markup():
    text = _text(120, Screen(_status(), 0.0, _watch()))
    assert "[link=http://evil.example]eve[/]" in text


def test_no_experiment_says_so():
    text = _text(80, Screen(_status(experiment=None), 0.0, PoolWatch(own_key=OWN)))
    assert "no experiment in progress" in text


def test_reasons_name_what_the_operator_did():
    mutate = Proposal("smoke-tiny", {"matrix_lr": 0.05}, ("1234abcd" + "0" * 56,), "mutate", changed=(("matrix_lr", 0.05),))
    assert proposal_reason(mutate) == "moves matrix_lr=0.05 from record 1234abcd"
    both = Proposal("smoke-tiny", {"num_layers": 3}, ("a" * 64, "b" * 64), "recombine")
    assert proposal_reason(both) == "unites the diffs of records aaaaaaaa and bbbbbbbb"
    again = Proposal("smoke-tiny", {}, ("c" * 64,), "replicate", subject="c" * 64)
    assert "re-measures the leader (record cccccccc)" in proposal_reason(again)

    class Stated:  # a proposer that gives its own reason (issue 18's proposers)
        operator, reason = "llm", "  try  a longer\nwarmdown "

    assert proposal_reason(Stated()) == "try a longer warmdown"


def test_quiet_prints_nothing_and_log_gets_every_line_and_the_warnings(tmp_path):
    from node_procs import P2PGOLF, free_port, make_home, wait_until

    home, _ = make_home(tmp_path, "q")
    _, absent = make_home(tmp_path, "absent")
    down = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{absent.peer_id}"  # nobody listens: one warning
    log = tmp_path / "join.log"
    proc = subprocess.Popen([P2PGOLF, "--home", str(home.root), "join", "--bench", "smoke", "--no-train", "--quiet", "--log", str(log), "--status-every", "0.5",
                             "--bootstrap", down], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until(lambda: log.exists() and "peers 0  pool" in log.read_text() and "cannot reach bootstrap peer" in log.read_text(), 30, what="a status line and the warning in the log")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""
    lines = log.read_text().splitlines()
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "
    assert all(re.match(stamp, line) for line in lines), lines
    assert any(re.match(stamp + r"WARNING p2pgolf.node.discovery: cannot reach bootstrap peer", line) for line in lines)
    assert "cannot reach bootstrap peer" in err, "warnings still go to stderr with --quiet"
    assert any(re.match(stamp + r"p2pgolf node 12D3KooW", line) for line in lines)
    assert any(re.match(stamp + r"stopped: peers 0", line) for line in lines)
    assert (log.stat().st_mode & 0o777) == 0o600


def test_log_that_cannot_be_opened_is_one_line(tmp_path):
    from node_procs import P2PGOLF

    result = subprocess.run([P2PGOLF, "--home", str(tmp_path / "h"), "join", "--no-train", "--log", str(tmp_path / "missing" / "x.log")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--log" in result.stderr and "x.log" in result.stderr


def test_pool_rows_read_every_record_oldest_first_and_skip_what_no_longer_parses(tmp_path):
    import sqlite3

    from p2pgolf.node.views import sim_pool
    from p2pgolf.node.views.pool_rows import read_rows
    from p2pgolf.pool.store import PoolStore

    with PoolStore(tmp_path / "pool.sqlite") as store:
        made = sim_pool.simulate_pool(store, sim_pool.identities(2, seed=3), 4, seed=3)
    conn = sqlite3.connect(tmp_path / "pool.sqlite")
    with conn:
        conn.execute("UPDATE records SET raw = x'c1' WHERE id = ?", (made[0].id,))  # not msgpack any more
    conn.close()
    before = (tmp_path / "pool.sqlite").read_bytes()
    rows = read_rows(tmp_path / "pool.sqlite")
    assert [r.id for r in rows] == [r.id for r in sorted(made[1:], key=lambda r: (r.record.created_ms, r.id))]
    assert {r.operator for r in rows} <= {"baseline", "mutate", "recombine", "replicate", "try_peer"}
    assert all(r.operator in ("replicate", "try_peer") for r in rows if r.kind == "attestation")
    assert (tmp_path / "pool.sqlite").read_bytes() == before


def test_status_snapshot_carries_the_reason_and_tokens_per_s():
    from p2pgolf.node.research_loop import CurrentRun, LoopControl
    from p2pgolf.trainer.progress import Progress

    control = LoopControl()
    control.current = CurrentRun(2, "mutate", "ab" * 32, budget_s=60.0, deadline_s=360.0, started_at=100.0, why="moves matrix_lr=0.05 from record 1234abcd")
    control.saw(Progress("training", step=5, train_loss=3.0, elapsed_s=10.0, budget_s=60.0, tokens_per_s=2500.0), now=110.0)
    current = control.snapshot(now=111.0)["current"]
    assert current["why"] == "moves matrix_lr=0.05 from record 1234abcd"
    assert current["tokens_per_s"] == 2500.0

"""A real `p2pgolf join` process with the shipped scripted proposer: it is asked, its port of a
peer's idea is trained on this machine, the record carries its rationale, and `status --json`
shows its use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgolf.node.proposers.operator import PROPOSERS_JOURNAL
from p2pgolf.node.research_loop import JOURNAL_NAME
from node_procs import P2PGOLF, NodeProc, make_home, wait_until
from p2pgolf.pool.store import PoolStore
from p2pgolf.protocol.identity import create_identity
from records_factory import H100, signed_result

pytestmark = pytest.mark.timeout(300)
BENCH = "smoke@3s"
SCRIPTED = Path(__file__).resolve().parents[1] / "examples" / "proposers" / "scripted.py"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_join_runs_the_scripted_proposer_s_port_of_a_peer_idea_with_its_rationale(tmp_path):
    home, me = make_home(tmp_path, "node")
    peer = create_identity(tmp_path / "peer.key")
    idea = signed_result(peer, bench=BENCH, diff={"activation": "swiglu"}, val_bpb=2.0, hw=H100, note="swiglu helped on my H100")
    with PoolStore(home.pool_db) as store:
        store.add(idea.raw)
    node = NodeProc(home, me, bench=BENCH, train=True)
    journal = home.root / "research" / JOURNAL_NAME
    try:
        node.start([], "--experiments", "1", "--eval-tokens", "4096", "--proposer", f"heuristics={sys.executable} {SCRIPTED}")
        node.wait_ready(60)
        wait_until(lambda: any(e.get("event") == "end" for e in _lines(journal)), 240, interval=0.5, what="the first experiment")
        shown = subprocess.run([P2PGOLF, "--home", str(home.root), "status", "--json"], capture_output=True, text=True, timeout=60)
        usage = json.loads(shown.stdout)["proposers"]
    finally:
        node.stop()
    (start,) = [e for e in _lines(journal) if e["event"] == "start"]
    (end,) = [e for e in _lines(journal) if e["event"] == "end"]
    assert start["operator"] == "proposer:heuristics" and start["diff"] == {"activation": "swiglu"} and start["parents"] == [idea.id]
    assert end["status"] == "ok", end
    with PoolStore(home.pool_db) as store:
        mine = store.get(end["record"])
    assert mine.author == me.public_hex and mine.record.parents == (idea.id,)
    assert mine.record.note.startswith("heuristics: port peer idea ") and "to this hardware" in mine.record.note
    (asked,) = _lines(home.root / "research" / PROPOSERS_JOURNAL)
    assert asked["kept"] >= 1 and asked["error"] is None
    assert usage["heuristics"]["requests"] == 1 and usage["heuristics"]["kept"] == asked["kept"]

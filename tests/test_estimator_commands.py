"""`p2pgolf pool explain` and `pool top` end to end, as real subprocesses on a real pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import recordgen as g
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.identity import load_identity

REPO = Path(__file__).resolve().parents[1]
CPU_KEY = g.CPU.key


def run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "P2PGOLF_HOME"}
    env["COLUMNS"] = "200"
    argv = [sys.executable, "-m", "p2pgolf.node.cli", "--home", str(home), *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A node whose pool holds: its own root and child, a pinned friend's results on H100 for
    the same candidates plus one more, and a stranger's claim refuted by the friend."""
    home = tmp_path_factory.mktemp("node")
    assert run("init", home=home).returncode == 0
    me = load_identity(home / "identity.key")
    friend, stranger = g.identity(7), g.identity(8)
    root = g.result(me, i=1, diff={}, val_bpb=2.40)
    child = g.result(me, i=2, diff={"matrix_lr": 0.03}, parents=(root.id,), val_bpb=2.30)
    f_root = g.result(friend, i=3, diff={}, val_bpb=2.00, hw=g.H100)
    f_child = g.result(friend, i=4, diff={"matrix_lr": 0.03}, parents=(f_root.id,), val_bpb=1.90, hw=g.H100)
    f_new = g.result(friend, i=5, diff={"activation": "swiglu"}, parents=(f_root.id,), val_bpb=1.80, hw=g.H100)
    fake = g.result(stranger, i=6, diff={"num_layers": 3}, parents=(root.id,), val_bpb=1.50)
    refute = g.attestation(friend, fake, val_bpb=2.45)
    with PoolStore(home / "pool.sqlite") as store:
        store.add_many([r.raw for r in (root, child, f_root, f_child, f_new, fake, refute)])
        TrustStore(store).pin(friend.public_hex, "friend")
    return home, {"root": root, "child": child, "f_new": f_new, "fake": fake, "refute": refute}


def test_top_ranks_candidates_for_this_hardware_with_their_uncertainty(home):
    home, recs = home
    proc = run("pool", "top", "--hw", CPU_KEY, "--bench", "smoke", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    by_candidate = {r["candidate"]: r for r in rows}
    child, swiglu, fake = (recs[k].record.candidate for k in ("child", "f_new", "fake"))
    # the friend's H100-only candidate, translated by the learned offset (+0.4) to 2.20 and
    # shrunk towards its parent (2.40) because only two candidates overlap, leads
    assert rows[0]["candidate"] == swiglu and 2.18 < rows[0]["mean"] < 2.35
    assert by_candidate[child]["incumbent"] and by_candidate[child]["established_here"] >= 1
    assert all(r["sd"] > 0 for r in rows)
    assert by_candidate[fake]["mean"] > 2.3  # the refuted claim is not believed
    table = run("pool", "top", "--hw", CPU_KEY, "--bench", "smoke", home=home)
    assert table.returncode == 0 and swiglu[:12] in table.stdout


def test_explain_lists_the_evidence_with_weights_translation_and_verdicts(home):
    home, recs = home
    fake = recs["fake"]
    proc = run("pool", "explain", fake.record.candidate[:10], "--hw", CPU_KEY, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["candidate"] == fake.record.candidate and doc["hw"] == CPU_KEY
    rows = {r["record"]: r for r in doc["evidence"]}
    claim = rows[fake.id]
    assert claim["status"] == "unknown" and claim["claim_weight"] < 0.01
    assert any("DISAGREES" in v for v in claim["verdicts"])
    assert rows[recs["refute"].id]["kind"] == "reeval" and rows[recs["refute"].id]["status"] == "pinned"
    assert doc["mean"] == pytest.approx(2.45, abs=0.02)
    swiglu = run("pool", "explain", recs["f_new"].record.candidate, "--hw", CPU_KEY, home=home)
    assert swiglu.returncode == 0, swiglu.stderr
    assert "offset" in swiglu.stdout and "friend" in swiglu.stdout


def test_explain_refuses_an_unknown_candidate_in_one_line(home):
    home, _ = home
    proc = run("pool", "explain", "abcdef123456", "--hw", CPU_KEY, home=home)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "abcdef123456" in lines[0]

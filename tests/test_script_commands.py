"""`p2pgolf script add/approve/ls/show/revoke`: content-addressed storage, and approval as the only gate."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from p2pgolf.node.home import Home
from p2pgolf.node.scripts import ScriptStore, ScriptStoreError
from script_helpers import SCRIPTS, script_bytes, wrapped
from trainer_helpers import P2PGOLF_CLI, p2pgolf


def test_add_stores_by_hash_and_shows_hyperparameters_unapproved(tmp_path):
    home = tmp_path / "home"
    proc = p2pgolf("script", "add", str(SCRIPTS / "tiny_golf.py"), "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    sha = hashlib.sha256(script_bytes("tiny_golf.py")).hexdigest()
    assert doc["sha"] == sha and doc["approved"] is False
    names = {h["name"]: h for h in doc["hyperparameters"]}
    assert names["LR"]["type"] == "float" and names["LR"]["default"] == 0.003 and names["LR"]["searchable"]
    assert names["TIE_EMBEDDINGS"]["type"] == "bool"
    assert (home / "blobs" / sha[:2] / sha).read_bytes() == script_bytes("tiny_golf.py")
    text = p2pgolf("script", "add", str(SCRIPTS / "tiny_golf.py"), home=home)
    assert "not approved: it will not run" in text.stdout and "p2pgolf script approve" in text.stdout


def test_approve_revoke_ls_show_by_prefix(tmp_path):
    home = tmp_path / "home"
    sha = hashlib.sha256(script_bytes("tiny_golf.py")).hexdigest()
    assert p2pgolf("script", "add", str(SCRIPTS / "tiny_golf.py"), home=home).returncode == 0
    approved = p2pgolf("script", "approve", sha[:10], home=home)
    assert approved.returncode == 0 and f"approved script {sha}" in approved.stdout
    assert ScriptStore(Home(home)).runnable(sha)
    listed = json.loads(p2pgolf("script", "ls", "--json", home=home).stdout)
    assert [(e["sha"], e["approved"]) for e in listed] == [(sha, True)]
    shown = p2pgolf("script", "show", sha[:8], home=home)
    assert "approved: yes" in shown.stdout and "MODEL_DIM" in shown.stdout
    assert p2pgolf("script", "revoke", sha[:8], home=home).returncode == 0
    assert not ScriptStore(Home(home)).runnable(sha)


def test_a_record_folder_adds_its_train_gpt(tmp_path):
    folder = tmp_path / "records" / "2026-01-01_Tiny"
    folder.mkdir(parents=True)
    (folder / "train_gpt.py").write_bytes(wrapped(script_bytes("tiny_golf.py")))
    (folder / "README.md").write_text("a record")
    store = ScriptStore(Home(tmp_path / "home"))
    entry, vocab = store.add_path(folder)
    assert entry.name == "2026-01-01_Tiny/train_gpt.py" and vocab.wrapped and "LR" in vocab


def test_bad_input_is_one_line_and_stores_nothing(tmp_path):
    home = tmp_path / "home"
    bad = tmp_path / "notes.py"
    bad.write_text("print('no hyperparameters here')\n")
    proc = p2pgolf("script", "add", str(bad), home=home)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: no hyperparameters found") and len(proc.stderr.strip().splitlines()) == 1
    assert not (home / "scripts.json").exists()
    proc = p2pgolf("script", "approve", "abcd1234", home=home)
    assert proc.returncode == 1 and "no script 'abcd1234' in this node" in proc.stderr


def test_approval_needs_intact_bytes(tmp_path):
    store = ScriptStore(Home(tmp_path / "home"))
    entry, _ = store.add_path(SCRIPTS / "tiny_golf.py")
    store.approve(entry.sha)
    path = store.blobs.path(entry.sha)
    path.chmod(0o600)
    path.write_bytes(b"import os\nX = os.environ.get('X', 1)\n")  # tampered on disk
    assert not store.runnable(entry.sha)
    with pytest.raises(ScriptStoreError):
        store.read_bytes(entry.sha)


def test_pool_top_shows_both_kinds_and_whether_a_script_runs_here(tmp_path):
    import recordgen as g
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.protocol.candidates import script_base
    from p2pgolf.protocol.records import Result
    from p2pgolf.protocol.signing import sign_record

    home = tmp_path / "home"
    assert p2pgolf("init", home=home).returncode == 0
    held = ScriptStore(Home(home)).add_path(SCRIPTS / "tiny_golf.py")[0].sha
    peer = g.identity(9)
    smoke = benchmark("smoke")

    def script_result(sha: str, bpb: float, i: int):
        r = Result(bench=smoke.id, author=peer.public_hex, created_ms=g.T0 + i, base=script_base(sha), diff={"LR": 0.004},
                   tokenizer="byte256", hw=g.CPU, budget_s=smoke.budget_s, seed=i, metrics=g.metrics(bpb), trainer="script/0")
        return sign_record(r, peer.signing_key)

    records = [g.result(peer, i=1, diff={}, val_bpb=2.4), script_result(held, 2.0, 2), script_result("ee" * 32, 1.9, 3)]
    with PoolStore(home / "pool.sqlite") as store:
        store.add_many([r.raw for r in records])
    proc = p2pgolf("pool", "top", "--hw", g.CPU.key, "--bench", "smoke", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    rows = {r["candidate"]: r for r in json.loads(proc.stdout)}
    assert rows[records[0].record.candidate]["kind"] == "builtin" and rows[records[0].record.candidate]["script"] is None
    assert rows[records[1].record.candidate]["script"] == "held" and rows[records[2].record.candidate]["script"] == "not held"
    assert rows[records[2].record.candidate]["tokenizer"] == "byte256"
    from p2pgolf.node.commands.pool_search_cmd import _label

    assert _label(script_base(held), "byte256", "held") == f"script:{held[:10]} (byte256, held)"  # the table's base column
    wide = subprocess.run(
        [*P2PGOLF_CLI, "--home", str(home), "pool", "top", "--hw", g.CPU.key, "--bench", "smoke"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"},
    ).stdout
    assert f"script:{held[:10]} (byte256, held)" in wide and "(byte256, not held)" in wide


def test_approve_can_choose_the_data_variant(tmp_path):
    home = tmp_path / "home"
    sha = hashlib.sha256(script_bytes("tiny_golf.py")).hexdigest()
    assert p2pgolf("script", "add", str(SCRIPTS / "tiny_golf.py"), home=home).returncode == 0
    proc = p2pgolf("script", "approve", sha[:8], "--tokenizer", "sp8192", home=home)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("on sp8192")
    assert ScriptStore(Home(home)).tokenizer(sha) == "sp8192"
    bad = p2pgolf("script", "approve", sha[:8], "--tokenizer", "SP 8192", home=home)
    assert bad.returncode == 1 and "is not a tokenizer name" in bad.stderr

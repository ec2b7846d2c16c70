"""`p2pgolf init`, `id`, `trust ...` and `pool ...` end to end, as real subprocesses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import recordgen as g
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.transfer import export_records

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, home: Path | None = None, env_home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "P2PGOLF_HOME"}
    env["COLUMNS"] = "200"  # wide enough that tables do not wrap ids
    if env_home is not None:
        env["P2PGOLF_HOME"] = str(env_home)
    argv = [sys.executable, "-m", "p2pgolf.node.cli", *(["--home", str(home)] if home else []), *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def ok(*args: str, home: Path) -> str:
    proc = run(*args, home=home)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def records():
    alice, bob = g.identity(2), g.identity(3)
    chain = g.batch(6, who=alice)
    return [*chain, *g.batch(3, who=bob, start=20), g.attestation(bob, chain[2]), g.result(bob, i=40, bench=g.GOLF)]


@pytest.fixture(scope="module")
def records_file(tmp_path_factory, records):
    folder = tmp_path_factory.mktemp("records")
    with PoolStore(folder / "pool.sqlite") as store:
        store.add_many([r.raw for r in records])
        export_records(store, folder / "records.jsonl")
    return folder / "records.jsonl"


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "node"
    ok("init", home=home)
    return home


def test_init_makes_a_private_key_and_a_pool_that_knows_its_own_key(tmp_path):
    home = tmp_path / "node"
    out = ok("init", home=home)
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    ident = json.loads(ok("id", "--json", home=home))
    assert ident["peer_id"].startswith("12D3KooW") and ident["peer_id"] in out
    trust = json.loads(ok("trust", "list", "--json", home=home))
    assert trust["unknown_weight"] == 0.1
    assert [(e["key"], e["status"], e["peer_id"]) for e in trust["entries"]] == [(ident["public_key"], "own", ident["peer_id"])]


def test_init_twice_is_refused_in_one_line_and_keeps_the_key(home):
    key = (home / "identity.key").read_bytes()
    line = one_line_error(run("init", home=home))
    assert "already exists" in line
    assert (home / "identity.key").read_bytes() == key


def test_the_home_env_var_works_like_the_flag(tmp_path):
    home = tmp_path / "from-env"
    assert run("init", env_home=home).returncode == 0
    ident = json.loads(run("id", "--json", env_home=home).stdout)
    assert ident["home"] == str(home)
    assert json.loads(ok("id", "--json", home=home)) == ident


def test_id_refuses_a_key_file_other_users_can_read(home):
    (home / "identity.key").chmod(0o644)
    line = one_line_error(run("id", home=home))
    assert "accessible by other users" in line and "chmod 600" in line


def test_commands_before_init_say_run_init_first_and_create_nothing(tmp_path):
    home = tmp_path / "never"
    for args in (("pool", "ls"), ("trust", "list"), ("pool", "stats")):
        assert "run `p2pgolf init` first" in one_line_error(run(*args, home=home))
    assert "run `p2pgolf init` first" in one_line_error(run("id", home=home))
    assert not home.exists()


def test_trust_commands_pin_block_unblock_and_refuse_mistakes(home):
    bob = g.identity(3)
    assert "pinned" in ok("trust", "pin", bob.peer_id, "--label", "bob", home=home)
    out = ok("trust", "block", "bob", home=home)  # a label names the key too
    assert "a block overrides a pin" in out
    assert "unblock" in one_line_error(run("trust", "pin", bob.public_hex, home=home))
    assert "unblocked" in ok("trust", "unblock", bob.public_hex, home=home)
    entries = json.loads(ok("trust", "list", "--json", home=home))["entries"]
    assert [e["status"] for e in entries] == ["own"]
    assert "is not a key" in one_line_error(run("trust", "pin", "zzz", home=home))
    assert "not pinned" in one_line_error(run("trust", "unpin", g.identity(9).public_hex, home=home))
    own = json.loads(ok("id", "--json", home=home))["public_key"]
    assert "own key" in one_line_error(run("trust", "block", own, home=home))
    assert "strictly between 0 and 1" in one_line_error(run("trust", "default-weight", "1", home=home))
    ok("trust", "default-weight", "0.3", home=home)
    assert ok("trust", "default-weight", home=home).strip() == "0.3"


def test_pool_import_ls_show_lineage_and_stats(home, records, records_file):
    out = ok("pool", "import", str(records_file), home=home)
    assert f"imported {len(records)} new, 0 already present, 0 rejected" in out
    ok("trust", "pin", g.identity(2).public_hex, "--label", "alice", home=home)

    listed = json.loads(ok("pool", "ls", "--json", "--limit", "0", home=home))
    assert sorted(item["id"] for item in listed) == sorted(r.id for r in records)
    assert [item["created_ms"] for item in listed] == sorted((r.created_ms for r in records), reverse=True)
    smoke_by_alice = json.loads(ok("pool", "ls", "--json", "--bench", "smoke", "--author", "alice", home=home))
    assert {item["id"] for item in smoke_by_alice} == {r.id for r in records[:6]}
    assert all(item["author_status"] == "pinned" for item in smoke_by_alice)
    chain = records[:6]
    same = json.loads(ok("pool", "ls", "--json", "--candidate", chain[1].record.candidate[:8], home=home))
    assert {item["id"] for item in same} == {r.id for r in records if r.kind == "result" and r.record.candidate == chain[1].record.candidate}
    table = ok("pool", "ls", "--limit", "3", home=home)
    assert "3 of 11 records" in table and records[-1].id[:10] in table

    shown = json.loads(ok("pool", "show", chain[2].id[:8], "--json", home=home))
    assert shown["id"] == chain[2].id and shown["sig"] == chain[2].signature.hex()
    assert shown["record"]["metrics"]["val_bpb"] == chain[2].record.metrics.val_bpb
    assert shown["attestations"] == [records[9].id]
    assert chain[2].id in ok("pool", "show", chain[2].id, home=home)

    lineage = json.loads(ok("pool", "lineage", chain[2].id[:8], "--json", home=home))
    assert lineage["ancestors"] == [chain[0].id, chain[1].id] and lineage["missing"] == []
    assert lineage["descendants"] == []  # chain[3] starts a new line (every third has no parent)
    tree = ok("pool", "lineage", chain[1].id, home=home)
    assert chain[2].id[:12] in tree and "descendants (1)" in tree

    stats = json.loads(ok("pool", "stats", "--json", home=home))
    assert stats["records"] == len(records) and stats["db_bytes"] > 0 and stats["schema_version"] == 2
    assert {b["name"]: b["records"] for b in stats["benches"]} == {"smoke": 10, "parameter-golf/sp1024-10min": 1}
    assert stats["kinds"] == {"attestation": 1, "result": 10}


def test_export_then_import_into_another_node_copies_the_pool(home, tmp_path, records, records_file):
    ok("pool", "import", str(records_file), home=home)
    out_file = tmp_path / "golf.bin"
    assert "exported 1 records" in ok("pool", "export", str(out_file), "--format", "msgpack", "--bench", "parameter-golf/sp1024-10min", home=home)
    assert "already exists" in one_line_error(run("pool", "export", str(out_file), home=home))
    other = tmp_path / "other"
    ok("init", home=other)
    report = json.loads(ok("pool", "import", str(out_file), "--json", home=other))
    assert (report["format"], report["added"], report["duplicates"], report["rejected"]) == ("msgpack", 1, 0, [])
    assert [item["id"] for item in json.loads(ok("pool", "ls", "--json", home=other))] == [records[-1].id]


def test_a_bad_import_file_reports_each_reject_and_exits_1_keeping_the_good(home, records_file, tmp_path):
    lines = records_file.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], "{oops", lines[1].replace('"sig": "', '"sig": "00'), lines[2]]) + "\n")
    proc = run("pool", "import", str(broken), home=home)
    assert proc.returncode == 1
    assert f"{broken}: line 2: not valid JSON" in proc.stderr
    assert f"{broken}: line 3: sig: must be 128 hex characters" in proc.stderr
    assert "traceback" not in proc.stderr.lower()
    assert "imported 2 new, 0 already present, 2 rejected" in proc.stdout
    assert len(json.loads(ok("pool", "ls", "--json", home=home))) == 2
    assert "no such file" in one_line_error(run("pool", "import", str(tmp_path / "absent.jsonl"), home=home))


def test_show_refuses_short_unknown_and_non_hex_ids(home, records_file):
    ok("pool", "import", str(records_file), home=home)
    assert "too short" in one_line_error(run("pool", "show", "abc", home=home))
    assert "no record" in one_line_error(run("pool", "show", "000000000000", home=home))
    assert "not a record id" in one_line_error(run("pool", "lineage", "xyz123", home=home))
    assert "unknown benchmark" in one_line_error(run("pool", "ls", "--bench", "nope", home=home))


def test_pool_help_lists_the_search_commands_without_importing_them():
    proc = run("pool", "--help")
    assert proc.returncode == 0
    for name in ("ls", "show", "lineage", "import", "export", "stats", "explain", "top"):
        assert f"  {name} " in proc.stdout

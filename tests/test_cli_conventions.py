"""The command line as a new user meets it (real subprocesses): global options after the
subcommand, one-line errors with exit codes that mean the same everywhere (0 ok, 1 could not
do it, 2 bad command line), `knobs`, 80-column tables, record ids told apart from candidate
ids, `pool import` into a new home, and `join`/`publish` refusing malformed addresses before
creating anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import recordgen as g
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.transfer import export_records
from p2pgolf.protocol.knobs import BASE_CONFIGS, KNOBS

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, columns: int = 200, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "P2PGOLF_HOME"}
    env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "p2pgolf.node.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pool_home(tmp_path_factory):
    """An initialised home holding results of two authors (one pinned, with a long label) and an attestation."""
    root = tmp_path_factory.mktemp("cli")
    alice, bob = g.identity(2), g.identity(3)
    chain = g.batch(6, who=alice)
    records = [*chain, *g.batch(3, who=bob, start=20), g.attestation(bob, chain[2])]
    with PoolStore(root / "src.sqlite") as store:
        store.add_many([r.raw for r in records])
        export_records(store, root / "records.jsonl")
    home = root / "home"
    assert run("init", "--home", str(home)).returncode == 0
    assert run("pool", "import", str(root / "records.jsonl"), "--home", str(home)).returncode == 0
    assert run("trust", "pin", alice.public_hex, "--label", "alice-with-a-rather-long-label", "--home", str(home)).returncode == 0
    return home, records


def test_global_options_work_after_the_subcommand_too(pool_home):
    home, records = pool_home
    before = json.loads(run("--home", str(home), "pool", "ls", "--json").stdout)
    after = run("pool", "ls", "--json", "--home", str(home))
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == before and len(before) == len(records)
    assert json.loads(run("id", f"--home={home}", "--json").stdout)["home"] == str(home)
    assert run("trust", "list", "-v", "--home", str(home)).returncode == 0


@pytest.mark.parametrize(
    "args,named",
    [
        (("pool", "ls", "--colour"), "--colour"),  # an unknown option
        (("poool",), "poool"),  # an unknown command
        (("pool", "ls", "--limit", "-3"), "--limit"),  # a value outside its range
        (("pool", "show"), "RECORD_ID"),  # a missing argument
    ],
)
def test_a_wrong_command_line_is_one_error_line_and_exit_2(tmp_path, args, named):
    line = one_error_line(run(*args, "--home", str(tmp_path / "h")), 2)
    assert named in line and "--help" in line


def test_a_group_without_its_subcommand_prints_its_help_and_exits_2():
    proc = run("pool")
    assert proc.returncode == 2 and "error:" not in proc.stderr + proc.stdout
    assert "Usage: p2pgolf pool" in proc.stdout + proc.stderr and "import" in proc.stdout + proc.stderr


def test_a_command_that_cannot_do_its_job_is_one_error_line_and_exit_1(tmp_path):
    assert "run `p2pgolf init` first" in one_error_line(run("pool", "ls", "--home", str(tmp_path / "never")), 1)
    assert "no node is running" in one_error_line(run("status", "--home", str(tmp_path / "never")), 1)
    assert "no node is running" in one_error_line(run("stop", "--home", str(tmp_path / "never")), 1)


def test_knobs_lists_every_knob_with_type_range_and_meaning_and_the_base_configs():
    proc = run("knobs", columns=80)
    assert proc.returncode == 0, proc.stderr
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    for knob in KNOBS.values():
        assert knob.name in proc.stdout
    assert "relu2|leaky_relu2|swiglu" in proc.stdout.replace("\n", "").replace(" ", "") or "swiglu" in proc.stdout
    for name in BASE_CONFIGS:
        assert name in proc.stdout
    assert "num_layers=2" in proc.stdout  # smoke-tiny's difference from the baseline

    doc = json.loads(run("knobs", "--json").stdout)
    assert [k["name"] for k in doc["knobs"]] == list(KNOBS)
    by_name = {k["name"]: k for k in doc["knobs"]}
    assert by_name["num_layers"] == {**by_name["num_layers"], "type": "int", "low": 1, "high": 64, "default": 9}
    assert by_name["activation"]["choices"] == ["relu2", "leaky_relu2", "swiglu"]
    assert by_name["model_dim"]["help"] == KNOBS["model_dim"].help
    assert doc["base_configs"] == BASE_CONFIGS


def test_pool_ls_and_trust_list_fit_80_columns_with_nothing_dropped(pool_home):
    home, records = pool_home
    table = run("pool", "ls", "--home", str(home), columns=80)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    header = lines[1].split()
    assert header == ["record", "author", "candidate", "config", "hw", "val_bpb", "age"]
    results = [r for r in records if r.kind == "result"]
    for r in records:
        assert r.id[:10] in table.stdout
    for r in results:
        assert r.record.candidate[:9] in table.stdout and f"{r.record.metrics.val_bpb:.4f}" in table.stdout

    trust = run("trust", "list", "--home", str(home), columns=80)
    lines = trust.stdout.splitlines()
    assert trust.returncode == 0 and max(map(len, lines)) <= 80
    start, end = lines[1].index("key / peer id"), lines[1].index("weight")
    column = "".join(line[start:end].strip() for line in lines[2:])
    alice = g.identity(2)
    assert alice.public_hex + alice.peer_id in column  # folded within its column, never cut


def test_a_record_id_given_as_a_candidate_id_and_the_reverse_say_which_kind_it_is(pool_home):
    home, records = pool_home
    result = records[1]
    line = one_error_line(run("pool", "ls", "--candidate", result.id[:12], "--home", str(home)), 1)
    assert f"{result.id[:12]} is a record id, not a candidate id" in line and result.record.candidate[:12] in line
    line = one_error_line(run("pool", "show", result.record.candidate[:12], "--home", str(home)), 1)
    assert f"{result.record.candidate[:12]} is a candidate id, not a record id" in line and "pool ls --candidate" in line
    attestation = records[-1]
    assert "attestation record" in one_error_line(run("pool", "explain", attestation.id[:12], "--home", str(home)), 1)
    assert "no record in the pool" in one_error_line(run("pool", "show", "0" * 12, "--home", str(home)), 1)


def test_pool_import_into_a_new_home_needs_no_init(tmp_path, pool_home):
    home, records = pool_home
    exported = tmp_path / "all.jsonl"
    assert run("pool", "export", str(exported), "--home", str(home)).returncode == 0
    fresh = tmp_path / "fresh" / "home"
    proc = run("pool", "import", str(exported), "--home", str(fresh))
    assert proc.returncode == 0, proc.stderr
    assert f"imported {len(records)} new" in proc.stdout and "created the pool" in proc.stdout
    assert len(json.loads(run("pool", "ls", "--json", "--limit", "0", "--home", str(fresh)).stdout)) == len(records)
    assert run("init", "--home", str(fresh)).returncode == 0  # an identity can still be made later
    assert "no such file" in one_error_line(run("pool", "import", str(tmp_path / "absent.jsonl"), "--home", str(tmp_path / "other")), 1)
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("command", ["join", "publish"])
def test_a_malformed_bootstrap_address_is_refused_before_anything_is_created(tmp_path, command):
    home = tmp_path / "new"
    extra = ["--bench", "smoke", "--no-train"] if command == "join" else [str(tmp_path)]
    line = one_error_line(run(command, "--bootstrap", "/ip4/1.2.3/tcp/x", *extra, "--home", str(home)), 2)
    assert "/ip4/1.2.3/tcp/x" in line
    assert not home.exists()

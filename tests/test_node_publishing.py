"""From a run's result.json (or a record file) to signed records, and the publish command's
answers when it cannot deliver."""

from __future__ import annotations

import json
import subprocess

import pytest

from node_procs import P2PGOLF, make_home
from records_factory import signed_result

from p2pgolf.node.commands.publish_cmd import records_from_path
from p2pgolf.node.publishing import sign_run
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.transfer import export_records
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import decode_record


def run_json(**changes) -> dict:
    data = {
        "bench": benchmark("smoke").id,
        "bench_name": "smoke",
        "base": "smoke-tiny",
        "diff": {},
        "seed": 7,
        "budget_s": 60,
        "hw": {"accel": "cpu", "model": "Test CPU", "count": 2, "memory_mib": 8192},
        "metrics": {"val_bpb": 3, "val_loss": 2.08, "steps": 40, "train_tokens": 81920, "artifact_bytes": 12345, "eval_tokens": 8192, "eval_partial": False},
        "artifact_sha256": "ab" * 32,
        "trainer": "torch/0.1",
        "status": "ok",
        "parents": ["cd" * 32],
        "note": "warmup 10",
    }
    data.update(changes)
    return data


def test_signed_run_carries_every_field_of_result_json_and_verifies():
    me = Identity.generate()
    signed = decode_record(sign_run(run_json(), me, now_ms=1_760_000_000_000).raw, now_ms=1_760_000_000_000)
    r = signed.record
    assert r.author == me.public_hex and r.bench == benchmark("smoke").id
    assert (r.base, dict(r.diff), r.seed, r.budget_s) == ("smoke-tiny", {}, 7, 60.0)
    assert r.hw.key == "cpu:Test CPU:x2" and r.hw.memory_mib == 8192
    assert r.metrics.val_bpb == 3.0 and r.metrics.steps == 40  # an integral JSON number became a float
    assert (r.artifact, r.parents, r.trainer, r.note) == ("ab" * 32, ("cd" * 32,), "torch/0.1", "warmup 10")


@pytest.mark.parametrize(
    "changes,named",
    [
        ({"status": "oversize"}, "only runs with status 'ok'"),
        ({"status": "failed"}, "status"),
        ({"bench": "00" * 32}, "is not the id of benchmark 'smoke'"),
        ({"hw": {"accel": "abacus", "model": "x", "count": 1, "memory_mib": 0}}, "hw.accel"),
        ({"metrics": {"val_bpb": 1.0}}, "metrics"),
        ({"parents": "none"}, "parents"),
    ],
)
def test_runs_that_peers_would_reject_are_refused_naming_the_field(changes, named):
    with pytest.raises(ProtocolError, match=named):
        sign_run(run_json(**changes), Identity.generate())


def test_missing_fields_are_listed():
    data = run_json()
    del data["seed"], data["note"]
    with pytest.raises(ProtocolError, match="missing field.*seed, note"):
        sign_run(data, Identity.generate())


def test_records_are_read_from_a_run_dir_raw_envelope_msgpack_export_and_json_lines(tmp_path):
    me = Identity.generate()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps(run_json()))
    (from_dir,) = records_from_path(run_dir, me)
    assert decode_record(from_dir).author == me.public_hex

    others = [signed_result(Identity.generate(), seed=i) for i in range(3)]
    (tmp_path / "one.bin").write_bytes(others[0].raw)
    assert records_from_path(tmp_path / "one.bin", me) == [others[0].raw]

    with PoolStore(tmp_path / "pool.sqlite") as store:
        store.add_many([o.raw for o in others])
        export_records(store, tmp_path / "all.msgpack")
        export_records(store, tmp_path / "all.jsonl")
    expected = {o.raw for o in others}
    assert set(records_from_path(tmp_path / "all.msgpack", me)) == expected
    assert set(records_from_path(tmp_path / "all.jsonl", me)) == expected

    (tmp_path / "junk.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ProtocolError, match="not a signed record"):
        records_from_path(tmp_path / "junk.bin", me)


def test_publish_without_node_or_peers_keeps_the_record_and_says_so_in_one_line(tmp_path):
    home, identity = make_home(tmp_path, "alone")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "result.json").write_text(json.dumps(run_json()))
    out = subprocess.run([P2PGOLF, "--home", str(home.root), "publish", str(run_dir)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "no peers are known" in out.stderr
    with PoolStore(home.pool_db) as store:
        assert store.count(author=identity.public_hex) == 1


def test_publish_refuses_a_failed_run_before_touching_the_network(tmp_path):
    home, _ = make_home(tmp_path, "h")
    (tmp_path / "result.json").write_text(json.dumps(run_json(status="oversize")))
    out = subprocess.run([P2PGOLF, "--home", str(home.root), "publish", str(tmp_path / "result.json")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "status is 'oversize'" in out.stderr and "Traceback" not in out.stderr
    with PoolStore(home.pool_db) as store:
        assert store.count() == 0

"""One measurement, one record: publishing a run directory twice, or after the research loop
published it, stores one record; and the estimator counts results that share artifact digest
and seed (the same run signed by two keys) once."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np

from node_procs import make_home
from trainer_helpers import P2PGOLF_CLI

from p2pgolf.node.commands.publish_cmd import records_from_path
from p2pgolf.node.publishing import RECORD_FILE, sign_run_dir
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence import result_evidence
from p2pgolf.pool.store import PoolStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import decode_record

CREATED_MS = 1_780_000_000_000


def _run_dir(tmp_path, name="run", **changes):
    run_dir = tmp_path / name
    run_dir.mkdir()
    result = {
        "bench": benchmark("smoke").id, "bench_name": "smoke", "base": "smoke-tiny", "diff": {}, "seed": 7, "budget_s": 60.0,
        "hw": {"accel": "cpu", "model": "Test CPU", "count": 2, "memory_mib": 8192},
        "metrics": {"val_bpb": 3.1, "val_loss": 2.1, "steps": 40, "train_tokens": 81920, "artifact_bytes": 12345, "eval_tokens": 8192, "eval_partial": False},
        "artifact_sha256": "ab" * 32, "trainer": "p2pgolf-torch/0.1.0", "status": "ok", "error": None, "parents": [], "note": "",
        "created_ms": CREATED_MS, "throughput": {"tokens_per_s": 1365.3, "cpu_share": 0.98, "degraded": False},
    }  # fmt: skip
    result.update(changes)
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def test_publishing_the_same_run_twice_from_the_command_line_stores_one_record(tmp_path):
    home, me = make_home(tmp_path, "home")
    run_dir = _run_dir(tmp_path)
    for _ in range(2):  # no peer is known: the record is stored in the local pool and the command says so
        proc = subprocess.run([*P2PGOLF_CLI, "--home", str(home.root), "publish", str(run_dir)], capture_output=True, text=True, timeout=60)
        assert "in the local pool" in proc.stderr, proc.stderr
    with PoolStore(home.pool_db) as store:
        (record,) = store.query(author=me.public_hex)
    assert record.created_ms == CREATED_MS  # the run's time, not the clock at publishing


def test_a_run_signed_again_gives_the_same_id_even_without_the_remembered_record(tmp_path):
    me = Identity.generate()
    run_dir = _run_dir(tmp_path)
    first = records_from_path(run_dir, me)
    (run_dir / RECORD_FILE).unlink()
    assert records_from_path(run_dir, me) == first == records_from_path(run_dir / "result.json", me)
    # a run from before created_ms was recorded: the file's time stands in, the same each time
    old = _run_dir(tmp_path, "old")
    data = json.loads((old / "result.json").read_text())
    del data["created_ms"], data["throughput"]
    (old / "result.json").write_text(json.dumps(data))
    os.utime(old / "result.json", (1_770_000_000, 1_770_000_000))
    again = records_from_path(old, me)
    (old / RECORD_FILE).unlink()
    assert records_from_path(old, me) == again
    assert decode_record(again[0]).created_ms == 1_770_000_000_000


def test_publishing_a_run_the_research_loop_published_gives_back_the_loops_record(tmp_path):
    from p2pgolf.node.publishing import result_from_run

    me = Identity.generate()
    run_dir = _run_dir(tmp_path)
    parent = "cd" * 32
    # the loop knows the run's lineage, which result.json does not carry
    looped = sign_run_dir(run_dir, me, build=lambda data: result_from_run({**data, "parents": [parent]}, me.public_hex), reuse=False)
    assert looped.record.parents == (parent,)
    (published,) = records_from_path(run_dir, me)
    assert published == looped.raw
    # another key publishing the same run makes its own record (and the estimator collapses them)
    other = Identity.generate()
    (theirs,) = records_from_path(run_dir, other)
    assert decode_record(theirs).id != looped.id


def _hw_results(pairs):
    return [
        result_evidence(rid, base="smoke-tiny", diff={}, author=author, hw="cpu:Test CPU:x2", val_bpb=bpb, budget_s=60.0, artifact=art, seed=seed, created_ms=CREATED_MS)
        for rid, author, bpb, art, seed in pairs
    ]


def test_the_estimator_counts_one_measurement_signed_by_two_keys_once():
    from p2pgolf.pool.evidence import Evidence

    statuses = {"me": "own", "peer": "unknown"}
    same_run = _hw_results([("r1", "me", 3.0, "aa" * 32, 7), ("r2", "peer", 3.0, "aa" * 32, 7), ("r3", "me", 3.0, "aa" * 32, 7)])
    post = estimate(Evidence(tuple(same_run)), statuses.get, "cpu:Test CPU:x2")
    (candidate,) = post.candidates
    info = post.info[candidate]
    assert info.n_results == 1 and info.record_ids == ("r1",)  # own, then earliest, then smallest id
    # another seed (or no artifact at all) is another measurement
    two_runs = _hw_results([("r1", "me", 3.0, "aa" * 32, 7), ("r2", "peer", 3.0, "aa" * 32, 8), ("r4", "me", 3.1, None, 7), ("r5", "me", 3.1, None, 7)])
    assert estimate(Evidence(tuple(two_runs)), statuses.get, "cpu:Test CPU:x2").info[candidate].n_results == 4
    # the collapse is order-independent, like the rest of the estimate
    flipped = estimate(Evidence(tuple(reversed(same_run))), statuses.get, "cpu:Test CPU:x2")
    assert np.allclose(flipped.mean, post.mean) and flipped.info[candidate].record_ids == ("r1",)


def test_an_attestation_of_a_collapsed_duplicate_counts_for_the_kept_record():
    from p2pgolf.pool.evidence import AttestationEvidence, Evidence

    statuses = {"me": "own", "peer": "pinned", "checker": "pinned"}
    results = _hw_results([("r1", "me", 3.0, "aa" * 32, 7), ("r2", "peer", 3.0, "aa" * 32, 7)])
    check = AttestationEvidence("a1", subject="r2", author="checker", method="reeval", hw="cpu:Test CPU:x2", val_bpb=3.0)
    post = estimate(Evidence(tuple(results), (check,)), statuses.get, "cpu:Test CPU:x2")
    (chk,) = post.checks
    assert chk.subject_id == "r1" and chk.agrees


def test_publishing_a_run_that_the_research_loop_published_stores_no_second_record(tmp_path):
    import shutil

    import trio

    import recordgen as g
    from p2pgolf.node.research_loop import Journal, LoopSettings, ResearchLoop
    from p2pgolf.pool.trust import TrustStore

    me = g.identity(31)
    template = _run_dir(tmp_path, "template")

    class Outcome:
        status = "ok"

        def __init__(self, result):
            self.result = result

    def runner(bench_name, base, diff, *, seed, out_dir, **kw):
        # what the trainer leaves behind: a run directory with its result.json
        shutil.copytree(template, out_dir)
        data = json.loads((out_dir / "result.json").read_text())
        data.update(bench=benchmark(bench_name).id, bench_name=bench_name, base=base, diff=diff, seed=seed, budget_s=benchmark(bench_name).budget_s)
        (out_dir / "result.json").write_text(json.dumps(data))
        return Outcome(data)

    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)

        async def publish(raw):
            store.add(raw)

        settings = LoopSettings(bench_name="smoke", journal_dir=tmp_path / "research", runs_dir=tmp_path / "runs", default_base="smoke-tiny", max_experiments=1, hw_key="cpu:Test CPU:x2")
        trio.run(ResearchLoop(me, store, trust, publish, settings, runner=runner).run)
        (end,) = Journal(tmp_path / "research" / "journal.jsonl").ends()
        (run_dir,) = (tmp_path / "runs").iterdir()
        (again,) = records_from_path(run_dir, me)  # what `p2pgolf publish RUN_DIR` signs
        assert decode_record(again).id == end["record"]
        store.add(again)
        assert store.count(author=me.public_hex) == 1

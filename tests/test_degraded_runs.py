"""Honest measurements: a run records the speed it trained at; a run slowed by its machine (other
programs on its core, or far below this node's usual speed for the hardware and model shape) is
marked degraded with the reason, in result.json, the summary, the record's note and the
research loop's log line, and the estimator weighs such results down, peers' too."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from trainer_helpers import P2PGOLF_CLI  # also: one torch thread, for the children too
from p2pgolf.protocol import knobs
from p2pgolf.trainer.cpu_share import CpuShareMeter
from p2pgolf.trainer.run_history import past_runs
from p2pgolf.trainer.throughput import NOTE_PREFIX, judge_throughput

SHAPE = knobs.throughput_shape(knobs.base_config("smoke-tiny"))
HW = "cpu:Test CPU:x2"


def _busy_loops(core: int, n: int) -> list[subprocess.Popen]:
    # each in its own session, as other users' programs are: with autogroup scheduling, a
    # session's processes share one slice, so loops in the test's session would compete less
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) for _ in range(n)]
    for p in procs:
        os.sched_setaffinity(p.pid, {core})
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:  # only the processes this test started, by PID
        p.kill()
        p.wait()


def _train_pinned(tmp_path: Path, core: int, *, contenders: int) -> tuple[subprocess.CompletedProcess, dict]:
    """`p2pgolf train` on smoke with the trainer on `core`; `contenders` busy loops join that core
    once training is about to start."""
    out = tmp_path / "run"
    cmd = [*P2PGOLF_CLI, "--home", str(tmp_path / "home"), "train", "--bench", "smoke", "--budget", "3", "--eval-tokens", "4096", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    busy: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 120
        while contenders and time.monotonic() < deadline and "params:" not in _read(out / "log.txt"):
            time.sleep(0.05)
        busy = _busy_loops(core, contenders)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        _stop(busy)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), json.loads((out / "result.json").read_text())


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _spin_share(core: int, seconds: float = 0.4) -> float:
    """The CPU share a spin on `core` gets now (a shared test machine may be busy)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        meter = CpuShareMeter()
        meter.start()
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            pass
        share = meter.stop()
    finally:
        os.sched_setaffinity(0, before)
    return share or 0.0


QUIET_ENOUGH = 0.6  # well above MIN_CPU_SHARE (0.4): room for the load to vary during the run


needs_schedstat = pytest.mark.skipif(not Path("/proc/self/task").exists() or not hasattr(os, "sched_setaffinity"), reason="needs Linux schedstat and CPU affinity")


@needs_schedstat
def test_a_run_on_a_contended_core_is_marked_degraded_and_says_why(tmp_path):
    core = max(os.sched_getaffinity(0))
    proc, result = _train_pinned(tmp_path, core, contenders=4)
    throughput = result["throughput"]
    assert throughput["degraded"] and throughput["cpu_share"] < 0.4
    assert "of the CPU time it was ready to use" in throughput["reason"]
    assert result["note"].startswith(NOTE_PREFIX) and result["status"] == "ok"
    assert throughput["tokens_per_s"] == pytest.approx(result["metrics"]["train_tokens"] / json.loads((tmp_path / "run" / "metrics.json").read_text())["training_seconds"])
    assert "degraded: yes: the trainer got" in proc.stdout  # the summary block says so


@needs_schedstat
def test_a_run_on_a_quiet_core_is_not_marked_degraded(tmp_path):
    shares = {core: _spin_share(core) for core in os.sched_getaffinity(0)}
    core = max(shares, key=shares.get)
    if shares[core] < QUIET_ENOUGH:
        pytest.skip(f"this machine's cores are busy right now (a spin gets {shares[core]:.0%}): no run here is uncontended")
    proc, result = _train_pinned(tmp_path, core, contenders=0)
    if result["throughput"]["cpu_share"] < QUIET_ENOUGH:  # others' programs came while it trained
        pytest.skip(f"the machine got busy during the run (it got {result['throughput']['cpu_share']:.0%} of its core)")
    assert not result["throughput"]["degraded"], result["throughput"]
    assert result["note"] == "" and "degraded: no" in proc.stdout
    assert result["throughput"]["tokens_per_s"] > 0 and "tokens_per_s:" in proc.stdout


def test_the_cpu_share_falls_when_busy_programs_share_the_core():
    core = max(os.sched_getaffinity(0))
    busy = _busy_loops(core, 3)
    try:
        share = _spin_share(core, 0.6)
    finally:
        _stop(busy)
    assert 0.0 < share < 0.4


def test_a_run_far_below_this_nodes_usual_speed_is_degraded_naming_both_figures(tmp_path):
    for i, speed in enumerate((9000.0, 10000.0, 11000.0)):
        run_dir = tmp_path / f"2026-{i}"
        run_dir.mkdir()
        result = {"status": "ok", "base": "smoke-tiny", "diff": {}, "hw": {"accel": "cpu", "model": "Test CPU", "count": 2, "memory_mib": 1}, "throughput": {"tokens_per_s": speed, "degraded": False}}
        (run_dir / "result.json").write_text(json.dumps(result))
    (tmp_path / "2026-9").mkdir()  # a run that never finished is not history
    (tmp_path / "2026-8").mkdir()
    (tmp_path / "2026-8" / "result.json").write_text("{torn")  # nor a damaged one
    history = past_runs(tmp_path)
    assert sorted(p.tokens_per_s for p in history) == [9000.0, 10000.0, 11000.0]
    slow = judge_throughput(2500.0, 0.97, HW, SHAPE, history)
    assert slow.degraded and slow.usual_tokens_per_s == 10000.0 and slow.usual_runs == 3
    assert "2,500 tokens/s is 25% of this node's usual 10,000" in slow.reason
    assert slow.note().startswith(NOTE_PREFIX) and len(slow.note()) <= 280
    assert not judge_throughput(8000.0, 0.97, HW, SHAPE, history).degraded
    other_shape = knobs.throughput_shape({**knobs.base_config("smoke-tiny"), "model_dim": 128})
    assert not judge_throughput(2500.0, 0.97, HW, other_shape, history).degraded  # nothing to compare with
    assert not judge_throughput(2500.0, None, HW, SHAPE, []).degraded  # no signs at all: not degraded


def test_the_learning_rate_does_not_change_the_throughput_shape():
    base = knobs.base_config("smoke-tiny")
    assert knobs.throughput_shape({**base, "matrix_lr": 0.1}) == knobs.throughput_shape(base)
    assert knobs.throughput_shape({**base, "train_batch_tokens": 8192}) != knobs.throughput_shape(base)


def test_the_estimator_weighs_down_a_peers_run_that_trained_far_fewer_tokens_than_its_class_usually_does():
    from p2pgolf.pool.estimator import estimate
    from p2pgolf.pool.evidence import DEGRADED_NOTE_PREFIX, Evidence, result_evidence

    assert DEGRADED_NOTE_PREFIX == NOTE_PREFIX  # the trainer writes what the pool reads

    def res(rid, cand_lr, bpb, tokens, degraded=False):
        return result_evidence(rid, base="smoke-tiny", diff={"matrix_lr": cand_lr}, author="peer", hw=HW, val_bpb=bpb, budget_s=60.0, train_tokens=tokens, artifact=rid * 32, degraded=degraded)

    # three runs of one shape at the usual speed, and one 40x slower that scored badly
    results = (res("a1", 0.03, 2.0, 400_000), res("b2", 0.03, 2.01, 410_000), res("c3", 0.05, 2.02, 390_000), res("d4", 0.05, 3.6, 10_000))
    post = estimate(Evidence(results), {"peer": "pinned"}.get, HW)
    rows = {r.record_id: r for rows in post.rows.values() for r in rows}
    assert rows["d4"].cap == pytest.approx(0.25 * rows["c3"].cap)
    fair = estimate(Evidence(results[:3] + (res("d4", 0.05, 3.6, 400_000),)), {"peer": "pinned"}.get, HW)
    slowed_cand = results[3].candidate
    assert post.estimate(slowed_cand).mean < fair.estimate(slowed_cand).mean  # the slow run pulls it up less
    # a run its author marked degraded counts less even without speed to compare
    marked = estimate(Evidence((res("e5", 0.03, 2.0, 0, degraded=True),)), {"peer": "pinned"}.get, HW)
    (row,) = marked.rows[results[0].candidate]
    assert row.cap == pytest.approx(0.25)


def test_the_research_loop_logs_a_degraded_run_and_journals_why(tmp_path, caplog):
    import recordgen as g
    from p2pgolf.node.research_loop import Journal, LoopSettings, ResearchLoop
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol.benchmarks import benchmark

    me = g.identity(21)
    reason = "the trainer got 21% of the CPU time it was ready to use (other programs competed for the cores)"

    class Outcome:
        status = "ok"

        def __init__(self, result):
            self.result = result

    def runner(bench_name, base, diff, *, seed, out_dir, **kw):
        bench = benchmark(bench_name)
        return Outcome({
            "bench": bench.id, "bench_name": bench.name, "base": base, "diff": diff, "seed": seed, "budget_s": bench.budget_s,
            "hw": {"accel": "cpu", "model": "Test CPU", "count": 2, "memory_mib": 1},
            "metrics": {"val_bpb": 3.6, "val_loss": 2.5, "steps": 25, "train_tokens": 102400, "artifact_bytes": 1, "eval_tokens": 1, "eval_partial": True},
            "artifact_sha256": "ef" * 32, "trainer": "p2pgolf-torch/0.1.0", "status": "ok", "error": None, "parents": [],
            "note": NOTE_PREFIX + reason, "created_ms": 1_780_000_000_000,
            "throughput": {"tokens_per_s": 1706.7, "cpu_share": 0.21, "degraded": True, "reason": reason},
        })  # fmt: skip

    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        published = []

        async def publish(raw):
            store.add(raw)
            published.append(raw)

        settings = LoopSettings(bench_name="smoke@1s", journal_dir=tmp_path / "research", runs_dir=tmp_path / "runs", default_base="smoke-tiny", max_experiments=1, hw_key=HW)
        with caplog.at_level(logging.INFO, logger="p2pgolf.node.research_loop"):
            trio.run(ResearchLoop(me, store, trust, publish, settings, runner=runner).run)
        (end,) = Journal(tmp_path / "research" / "journal.jsonl").ends()
        assert end["status"] == "ok" and end["note"].startswith("DEGRADED: the trainer got 21%")
        assert any("finished: val_bpb 3.6000" in m and "DEGRADED" in m for m in caplog.messages)
        assert store.get(end["record"]).record.note.startswith(NOTE_PREFIX)  # peers learn it too


def test_the_cpu_share_is_unknown_where_the_system_does_not_say(monkeypatch, tmp_path):
    import p2pgolf.trainer.cpu_share as cpu_share
    monkeypatch.setattr(cpu_share, "_TASKS", tmp_path / "no-proc")
    meter = CpuShareMeter()
    meter.start()
    assert meter.stop() is None

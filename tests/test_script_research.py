"""The research loop searches an approved script's hyperparameters; an unapproved one never runs,
whatever the records say, and its records still count as evidence."""

from __future__ import annotations

import hashlib

import pytest
import trio

import recordgen as g
from p2pgolf.node.home import Home
from p2pgolf.node.research_loop import Journal, LoopSettings, ResearchLoop
from p2pgolf.node.scripts import ScriptStore
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence import from_store
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.candidates import script_base
from p2pgolf.protocol.records import Result
from p2pgolf.protocol.signing import sign_record
from script_helpers import SCRIPTS, script_bytes
from p2pgolf.trainer.hardware import detect_hardware
from p2pgolf.trainer.script_runner import launch_script

pytestmark = pytest.mark.timeout(300)
BENCH = "smoke@4s"


def _loop(tmp_path, store, trust, me, published, n, scripts, *, runner=None, script_runner=None):
    async def publish(raw: bytes) -> None:
        store.add(raw)
        published.append(raw)

    settings = LoopSettings(
        bench_name=BENCH, journal_dir=tmp_path / "research", runs_dir=tmp_path / "runs", default_base="smoke-tiny",
        max_experiments=n, eval_token_cap=4096, timeout_slack_s=120, hw_key=detect_hardware().key, device="cpu",
    )  # fmt: skip
    return ResearchLoop(me, store, trust, publish, settings, runner=runner, scripts=scripts, script_runner=script_runner, hide=(str(tmp_path / "home"),))


def _run(loop, seconds=240):
    async def main():
        with trio.fail_after(seconds):
            await loop.run()

    trio.run(main)


def _peer_script_result(peer, sha: str, val_bpb: float, i: int):
    hw = detect_hardware()
    bench = benchmark(BENCH)
    record = Result(
        bench=bench.id, author=peer.public_hex, created_ms=g.T0 + i, base=script_base(sha), diff={"LR": 0.01 + i / 1000},
        tokenizer="byte256", hw=hw, budget_s=bench.budget_s, seed=i, metrics=g.metrics(val_bpb), trainer="script/0",
    )  # fmt: skip
    return sign_record(record, peer.signing_key)


class _CountingScriptRunner:
    def __init__(self):
        self.calls = 0

    def __call__(self, run, out_dir, **kw):
        self.calls += 1
        return launch_script(run, out_dir, **kw)


class _BuiltinStub:
    """Stands in for the built-in trainer (this test is about what is chosen, not how it trains)."""

    def __init__(self):
        self.bases = []

    def __call__(self, bench_name, base, diff, *, seed, out_dir, cancel=None, **kw):
        import types

        from p2pgolf.trainer.runner import RESULT_KEYS

        self.bases.append(base)
        bench = benchmark(bench_name)
        result = {
            "bench": bench.id, "bench_name": bench.name, "base": base, "diff": dict(diff), "tokenizer": bench.tokenizer, "seed": seed,
            "budget_s": bench.budget_s, "hw": detect_hardware().to_wire(), "status": "ok", "error": None, "parents": [], "note": "",
            "metrics": {"val_bpb": 3.0, "val_loss": 2.0, "steps": 1, "train_tokens": 1, "artifact_bytes": 1, "eval_tokens": 1, "eval_partial": False},
            "artifact_sha256": None, "trainer": "stub/0", "created_ms": 1_764_590_400_000 + seed,
            "throughput": {"tokens_per_s": 1000.0, "cpu_share": 1.0, "degraded": False},
        }  # fmt: skip
        assert set(result) == set(RESULT_KEYS)
        return types.SimpleNamespace(result=result, status="ok")


def test_an_unapproved_script_never_runs_whatever_the_records_say(tmp_path):
    me, peer = g.identity(21), g.identity(22)
    scripts = ScriptStore(Home(tmp_path / "home"))
    entry, _ = scripts.add_path(SCRIPTS / "tiny_golf.py")  # held, not approved
    published: list[bytes] = []
    runner, script_runner = _BuiltinStub(), _CountingScriptRunner()
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        trust.pin(peer.public_hex)  # a pinned peer reports excellent results with the script
        for i in range(4):
            store.add(_peer_script_result(peer, entry.sha, 1.0 + i / 100, i).raw)
        _run(_loop(tmp_path, store, trust, me, published, 3, scripts, runner=runner, script_runner=script_runner))
        assert script_runner.calls == 0 and runner.bases == ["smoke-tiny"] * 3
        ends = Journal(tmp_path / "research" / "journal.jsonl").ends()
        assert [e["status"] for e in ends] == ["ok"] * 3, ends
        post = estimate(from_store(store, benchmark(BENCH).id), trust.status, detect_hardware().key, budget_s=benchmark(BENCH).budget_s)
        assert post.incumbent() is not None and post.info[post.incumbent()].base == script_base(entry.sha)  # still the evidence's leader


def test_an_approved_script_is_trained_and_its_hyperparameters_searched(tmp_path):
    me = g.identity(23)
    scripts = ScriptStore(Home(tmp_path / "home"))
    entry, vocab = scripts.add_path(SCRIPTS / "tiny_golf.py")
    scripts.approve(entry.sha)
    published: list[bytes] = []
    runner, script_runner = _BuiltinStub(), _CountingScriptRunner()
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        _run(_loop(tmp_path, store, trust, me, published, 3, scripts, runner=runner, script_runner=script_runner))
        mine = [r for r in store.query(author=me.public_hex)]
        ends = Journal(tmp_path / "research" / "journal.jsonl").ends()
        assert [e["status"] for e in ends] == ["ok"] * 3, ends
        assert runner.bases == [] and script_runner.calls == 3
        results = [r.record for r in mine if r.kind == "result"]
        assert all(r.base == script_base(hashlib.sha256(script_bytes("tiny_golf.py")).hexdigest()) and r.tokenizer == "byte256" for r in results)
        assert results[0].diff == {} or any(not r.diff for r in results)  # the defaults were measured first
        assert any(r.diff for r in results)  # and hyperparameters were moved
        for r in results:
            assert vocab.check_diff(r.diff) == dict(r.diff)  # every diff fits the script's vocabulary

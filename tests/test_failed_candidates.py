"""A candidate that failed here is remembered for this hardware class and not chosen again,
until a trusted key's result for it arrives or the user asks (pool/failures.py, the research
loop and the bandit's `avoid`)."""

from __future__ import annotations

import trio

import recordgen as g
from fake_runs import finished
from p2pgolf.node.research_loop import Journal, LoopSettings, ResearchLoop
from p2pgolf.pool.failures import FailureMemory
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore

HW = g.CPU.key
UNRUNNABLE = {"num_layers": 3}  # stands for a diff whose plan the trainer refuses here


def _runner(bench_name, base, diff, *, seed, out_dir, **kw):
    """The trainer's interface: refuses the unrunnable diff as the memory plan would, trains the rest."""
    if dict(diff) == UNRUNNABLE:
        raise RuntimeError("the memory plan needs 41 GiB, this machine has 8 GiB (train_batch_tokens=16777216 with grad_accum_steps=1)")
    return finished(bench_name, base, diff, seed, artifact_sha256=f"{seed:064x}", trainer="p2pgolf-torch/0.1.0")


def _pool(tmp_path, me):
    store = PoolStore(tmp_path / "pool.sqlite")
    trust = TrustStore(store)
    trust.set_own(me.public_hex)
    store.add_signed(g.result(me, i=0, diff={}, val_bpb=2.5))
    for n in (40, 41, 42):  # a few friends' keys back a claim that cannot run here, far better than ours
        trust.pin(g.identity(n).public_hex, label=f"friend {n}")
        store.add(g.result(g.identity(n), i=n, diff=UNRUNNABLE, val_bpb=1.9).raw)
    return store, trust


def _loop(tmp_path, store, trust, me):
    async def publish(raw: bytes) -> None:
        store.add(raw)

    settings = LoopSettings(bench_name="smoke", journal_dir=tmp_path / "research", runs_dir=tmp_path / "runs", default_base="smoke-tiny", hw_key=HW)
    return ResearchLoop(me, store, trust, publish, settings, runner=_runner)


def _unrunnable_starts(tmp_path) -> int:
    from p2pgolf.protocol.candidates import candidate_id

    bad = candidate_id("smoke-tiny", UNRUNNABLE, "byte256")
    return sum(1 for s in Journal(tmp_path / "research" / "journal.jsonl").starts() if s["candidate"] == bad)


def test_a_candidate_that_cannot_run_here_is_picked_once_and_never_again(tmp_path):
    me = g.identity(11)
    store, trust = _pool(tmp_path, me)
    with store:
        loop = _loop(tmp_path, store, trust, me)
        ends = [trio.run(loop.step) for _ in range(4)]
        assert _unrunnable_starts(tmp_path) == 1  # failed_candidate_repicks == 0
        assert [e["status"] for e in ends].count("failed") == 1 and len(ends) == 4
        (failure,) = FailureMemory(store).failures()
        assert failure.hw == HW and failure.status == "failed" and "memory plan" in failure.reason
        # after a restart (a new loop over the same file) it is still remembered
        again = _loop(tmp_path, store, trust, me)
        for _ in range(2):
            trio.run(again.step)
        assert _unrunnable_starts(tmp_path) == 1


def test_a_failure_is_lifted_by_a_trusted_result_or_by_the_user_not_by_a_stranger(tmp_path):
    me, friend = g.identity(11), g.identity(12)
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        trust.pin(friend.public_hex)
        memory = FailureMemory(store)
        bad = g.result(g.identity(40), i=1)
        store.add(bad.raw, now_ms=g.T0)
        trusted = lambda a: trust.status(a) in ("own", "pinned")  # noqa: E731
        memory.record(g.SMOKE, HW, bad.record.candidate, "oversize", "artifact 17,000,000 bytes", now_ms=g.T0 + 10)
        assert memory.avoid(g.SMOKE, HW, trusted) == {bad.record.candidate}
        assert memory.avoid(g.SMOKE, g.H100.key, trusted) == set() and memory.avoid(g.GOLF, HW, trusted) == set()
        store.add(g.result(g.identity(41), i=1, val_bpb=1.0).raw, now_ms=g.T0 + 20)  # a stranger says it runs
        assert memory.avoid(g.SMOKE, HW, trusted) == {bad.record.candidate}
        assert FailureMemory(tmp_path / "pool.sqlite").avoid(g.SMOKE, HW, trusted) == {bad.record.candidate}  # persisted
        store.add(g.result(friend, i=1, val_bpb=2.3).raw, now_ms=g.T0 + 30)  # a pinned key ran it
        assert memory.avoid(g.SMOKE, HW, trusted) == set()
        memory.record(g.SMOKE, HW, bad.record.candidate, "failed", "crashed again", now_ms=g.T0 + 40)
        assert memory.avoid(g.SMOKE, HW, trusted) == {bad.record.candidate}
        assert memory.failures()[0].times == 2
        assert memory.retry(bad.record.candidate) == 1 and memory.avoid(g.SMOKE, HW, trusted) == set()


def test_pool_failed_lists_and_pool_retry_lifts_a_failure(tmp_path):
    import json

    from click.testing import CliRunner

    from p2pgolf.node.cli import cli as main
    from p2pgolf.node.home import Home

    home = Home(tmp_path / "home")
    with PoolStore(home.pool_db) as store:
        memory = FailureMemory(store)
        memory.record(g.SMOKE, HW, "ab" * 32, "oversize", "artifact [bold]17,000,001[/] bytes", now_ms=g.T0)
        memory.record(g.SMOKE, HW, "cd" * 32, "failed", "crashed", now_ms=g.T0)
    cli = CliRunner()
    listed = cli.invoke(main, ["--home", str(home.root), "pool", "failed", "--json"])
    assert listed.exit_code == 0, listed.output
    assert sorted(f["candidate"] for f in json.loads(listed.output)) == ["ab" * 32, "cd" * 32]
    shown = cli.invoke(main, ["--home", str(home.root), "pool", "failed"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "[bold]17,000,001[/]" in shown.output  # a peer's words are printed, not rendered
    assert cli.invoke(main, ["--home", str(home.root), "pool", "retry", "abab"]).exit_code != 0  # too short a prefix
    done = cli.invoke(main, ["--home", str(home.root), "pool", "retry", "ababab"])
    assert done.exit_code == 0 and "abababababab may be chosen again" in done.output
    with PoolStore(home.pool_db) as store:
        assert [f.candidate for f in FailureMemory(store).failures()] == ["cd" * 32]
    assert cli.invoke(main, ["--home", str(home.root), "pool", "retry", "--all"]).exit_code == 0
    with PoolStore(home.pool_db) as store:
        assert FailureMemory(store).failures() == []


def test_the_bandit_never_proposes_an_avoided_candidate_by_any_operator():
    import numpy as np

    from p2pgolf.pool import bandit
    from p2pgolf.pool.estimator import estimate
    from p2pgolf.pool.evidence import Evidence, result_evidence
    from p2pgolf.pool.proposals import make_proposal
    from p2pgolf.pool.trust_weights import static_status

    me = "aa" * 32
    rows = [result_evidence(f"{i:064x}", base="smoke-tiny", diff=d, author=me, hw=HW, val_bpb=v, budget_s=60.0, seed=i)
            for i, (d, v) in enumerate([({}, 2.5), ({}, 2.51), (UNRUNNABLE, 2.2), (UNRUNNABLE, 2.21), ({"matrix_lr": 0.03}, 2.4)])]
    post = estimate(Evidence(tuple(rows)), static_status(me), HW, budget_s=60.0)
    bad = rows[2].candidate
    assert post.incumbent() == bad  # the best measured candidate: every operator would build on or re-measure it
    picks = {bandit.choose(post, np.random.default_rng(s)).proposal.candidate for s in range(40)}
    assert bad in picks
    offered = lambda: [make_proposal("smoke-tiny", UNRUNNABLE, (), "try_peer", tokenizer="byte256")]  # noqa: E731 - a proposer offering it
    avoided = {bandit.choose(post, np.random.default_rng(s), avoid={bad}, external={"proposer:x": offered}).proposal.candidate for s in range(40)}
    assert bad not in avoided and avoided

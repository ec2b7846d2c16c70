"""The research loop: a real training run is chosen, signed, stored and published; after a
restart nothing finished is trained again and a cut-off run costs one experiment; cancelling
the loop stops its trainer at once and the run is journalled as abandoned."""

from __future__ import annotations

import functools
import json
import shutil
import threading
import time

import psutil
import pytest
import trio

import recordgen as g
from p2pgolf.node.home import Home
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.node.research_loop import CurrentRun, Journal, LoopControl, LoopSettings, ResearchLoop, run_research_loop
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.trainer.progress import Progress

pytestmark = pytest.mark.timeout(300)


def _loop(tmp_path, store, trust, me, published, max_experiments, **kw):
    async def publish(raw: bytes) -> None:
        store.add(raw)
        published.append(raw)

    settings = LoopSettings(
        bench_name="smoke@1s",
        journal_dir=tmp_path / "research",
        runs_dir=tmp_path / "runs",
        default_base="smoke-tiny",
        max_experiments=max_experiments,
        eval_token_cap=4096,
        timeout_slack_s=120,
    )
    return ResearchLoop(me, store, trust, publish, settings, **kw)


def _run(loop, seconds):
    async def main():
        with trio.fail_after(seconds):
            await loop.run()

    trio.run(main)


def test_the_loop_trains_publishes_and_resumes_without_repeating_a_finished_run(tmp_path):
    me = g.identity(11)
    published: list[bytes] = []
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        _run(_loop(tmp_path, store, trust, me, published, 1), 240)
        (first,) = store.query(author=me.public_hex)
        assert first.kind == "result" and first.bench == benchmark("smoke@1s").id
        assert first.record.base == "smoke-tiny" and 0 < first.record.metrics.val_bpb < 100
        (run_dir,) = list((tmp_path / "runs").iterdir())

        # a previous process finished training experiment 1 but died before publishing it,
        # and was cut off in the middle of experiment 2
        journal = Journal(tmp_path / "research" / "journal.jsonl")
        finished_copy = tmp_path / "runs-before-crash" / "exp-1"
        shutil.copytree(run_dir, finished_copy)
        proposal = _ChosenBefore(first)
        journal.start(1, proposal=proposal, seed=1, run_dir=str(finished_copy))
        journal.start(2, proposal=proposal, seed=2, run_dir=str(tmp_path / "runs-before-crash" / "exp-2"))

        _run(_loop(tmp_path, store, trust, me, published, 3), 60)
        assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing was trained again
        ends = Journal(tmp_path / "research" / "journal.jsonl").ends()
        assert [e["status"] for e in ends] == ["ok", "ok", "lost"]
        recovered = store.get(ends[1]["record"])
        assert recovered.kind == "attestation" and recovered.record.subject == first.id
        assert len(published) == 2


class _ChosenBefore:
    """The journal entry of a replicate of `record` (what a previous process had chosen)."""

    def __init__(self, record):
        self.candidate = record.record.candidate
        self.base = record.record.base
        self.diff = dict(record.record.diff)
        self.parents = (record.id,)
        self.operator = "replicate"
        self.subject = record.id


def test_a_torn_journal_line_is_skipped_and_the_rest_is_kept(tmp_path):
    path = tmp_path / "journal.jsonl"
    good = {"event": "start", "n": 0, "operator": "mutate", "run_dir": "x", "parents": []}
    path.write_text(json.dumps(good) + "\n" + '{"event": "end", "n": 0, "sta')
    journal = Journal(path)
    assert journal.count() == 1 and [e["n"] for e in journal.unfinished()] == [0]


def _trainer_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True) if "p2pgolf.trainer.runner" in " ".join(c.cmdline())]


def test_cancelling_a_node_mid_run_stops_its_trainer_at_once_and_journals_the_run_abandoned(tmp_path):
    home = Home(tmp_path / "home")
    home.root.mkdir()
    me = g.identity(12)
    control = LoopControl()
    seen: dict = {}

    def watch(child: psutil.Process) -> None:
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.02)
        seen["gone_at"] = time.monotonic()

    async def main() -> None:
        with PoolStore(home.pool_db) as store:
            trust = TrustStore(store)
            trust.set_own(me.public_hex)
            worker = functools.partial(run_research_loop, control=control, eval_token_cap=4096)
            node = Node(me, store, trust, NodeOptions(benches=(benchmark("smoke@60s"),), home=home), worker=worker)
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                with trio.fail_after(120):
                    while getattr(control.progress, "phase", None) != "training":
                        await trio.sleep(0.05)
                (child,) = _trainer_children()
                watcher = threading.Thread(target=watch, args=(child,), daemon=True)
                watcher.start()
                seen["cancelled_at"] = time.monotonic()
                nursery.cancel_scope.cancel()  # what an in-process user does to stop a node
            watcher.join(30)

    trio.run(main)
    assert "gone_at" in seen, "the trainer outlived the cancelled node"
    assert seen["gone_at"] - seen["cancelled_at"] < 5.0  # stopped at once, not left to finish
    assert _trainer_children() == []
    journal = Journal(home.root / "research" / "journal.jsonl")
    (end,) = journal.ends()
    assert end["status"] == "abandoned" and end["record"] is None
    assert journal.unfinished() == []  # a restart writes it off for good instead of training it again
    assert journal.history() == []  # the user's stop says nothing about the operator that chose it
    (run_dir,) = list(home.runs_dir.iterdir())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "abandoned" and result["metrics"] is None


def test_a_cancel_arriving_just_as_a_run_finishes_loses_nothing(tmp_path):
    from p2pgolf.trainer.api import run_experiment

    me = g.identity(13)
    published: list[bytes] = []
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)

        async def main() -> None:
            token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:

                def runner(*args, progress, **kw):
                    def relay(event: Progress) -> None:
                        progress(event)
                        if event.phase == "done":  # emitted once result.json is written
                            trio.from_thread.run_sync(scope.cancel, trio_token=token)

                    return run_experiment(*args, progress=relay, **kw)

                with trio.fail_after(240):
                    await _loop(tmp_path, store, trust, me, published, None, runner=runner).run()
            assert scope.cancelled_caught

        trio.run(main)
        assert published == []
        assert [e["n"] for e in Journal(tmp_path / "research" / "journal.jsonl").unfinished()] == [0]

        _run(_loop(tmp_path, store, trust, me, published, 1), 60)  # the restart publishes it
        (end,) = Journal(tmp_path / "research" / "journal.jsonl").ends()
        assert end["status"] == "ok" and store.get(end["record"]).author == me.public_hex
        assert len(published) == 1 and len(list((tmp_path / "runs").iterdir())) == 1


def test_the_finishing_message_says_where_the_run_is_and_bounds_what_is_left():
    control = LoopControl()
    assert control.remaining() == "no run in progress" and control.finish() is None and control.finishing
    control.current = CurrentRun(4, "mutate", "ab" * 32, budget_s=600.0, deadline_s=900.0, started_at=100.0)
    assert control.finish() is control.current
    assert control.remaining(now=100.0) == "starting, then 10m00s of training and an evaluation; at most 15m00s"
    control.saw(Progress("training", step=50, elapsed_s=420.0, budget_s=600.0), now=530.0)
    assert control.remaining(now=530.0) == "training, about 3m00s of its 10m00s budget left, then evaluation; at most 7m50s"
    assert control.remaining(now=590.0) == "training, about 2m00s of its 10m00s budget left, then evaluation; at most 6m50s"
    assert control.remaining(now=711.0) == "training, its 10m00s budget spent, then evaluation; at most 4m49s"
    control.saw(Progress("evaluating", elapsed_s=600.0, budget_s=600.0, done=3, total=12), now=1000.0)
    assert control.remaining(now=1100.0) == "evaluating, 3 of 12 windows done; at most 0s"

"""The research loop: a real training run is chosen, signed, stored and published; after a
restart nothing finished is trained again and a cut-off run costs one experiment."""

from __future__ import annotations

import json
import shutil

import trio

import recordgen as g
from node.research_loop import Journal, LoopSettings, ResearchLoop
from pool.store import PoolStore
from pool.trust import TrustStore
from protocol.benchmarks import benchmark


def _loop(tmp_path, store, trust, me, published, max_experiments):
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
    return ResearchLoop(me, store, trust, publish, settings)


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

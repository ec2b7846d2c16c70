"""The research loop records a refused plan as a failed experiment whose note names the knob,
and nothing is started (the real loop, journal and trainer entry point; only the bandit's pick
is fixed to a peer's candidate that cannot run here)."""

from __future__ import annotations

import pytest
import trio

import recordgen as g
from p2pgolf.node.research_loop import Journal, LoopSettings, ResearchLoop
from p2pgolf.pool import bandit
from p2pgolf.pool.proposals import make_proposal
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore

pytestmark = pytest.mark.timeout(60)


def test_a_peer_candidate_with_eval_stride_1_fails_at_once_naming_the_knob(tmp_path, monkeypatch):
    bad = make_proposal("smoke-tiny", {"eval_stride": 1}, (), "try_peer", tokenizer="byte256")
    monkeypatch.setattr(bandit, "choose", lambda *a, **k: bandit.Choice(bad, 0.0, {}, None))
    me = g.identity(31)
    published: list[bytes] = []

    async def publish(raw: bytes) -> None:
        published.append(raw)

    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        settings = LoopSettings(bench_name="smoke@1s", journal_dir=tmp_path / "research", runs_dir=tmp_path / "runs", default_base="smoke-tiny", max_experiments=1, eval_token_cap=4096, timeout_slack_s=60)
        loop = ResearchLoop(me, store, trust, publish, settings)

        async def main():
            with trio.fail_after(30):
                return await loop.step()

        end = trio.run(main)
    assert end["status"] == "failed" and "knob eval_stride" in end["note"] and "refused before training (eval_work)" in end["note"]
    assert Journal(tmp_path / "research" / "journal.jsonl").ends()[-1]["note"] == end["note"]
    assert published == [] and not any((tmp_path / "runs").glob("*/result.json"))

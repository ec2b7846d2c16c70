"""The research loop journals what each choice promised over the incumbent and what its run
delivered, and the meta level's history carries both across a restart (the bandit's
`calibrate` charges an operator that over-promises): real loop steps on a real SQLite pool."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import trio

import recordgen as g
from fake_runs import finished
from p2pgolf.node.research_loop import Journal, LoopSettings, ResearchLoop
from p2pgolf.pool import bandit
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence_cache import EvidenceCache
from p2pgolf.pool.proposals import make_proposal
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.pool.trust_weights import TrustPolicy
from p2pgolf.protocol.benchmarks import benchmark

HW = g.CPU.key
MEASURED = 2.47  # what every run of the fake trainer measures
BROKEN = {"num_layers": 3}  # a diff the fake trainer refuses


def _runner(bench_name, base, diff, *, seed, out_dir, **kw):
    """The trainer's interface, measuring MEASURED for everything it accepts."""
    if dict(diff) == BROKEN:
        raise RuntimeError("the memory plan does not fit")
    return finished(bench_name, base, diff, seed, val_bpb=MEASURED, artifact_sha256=f"{seed:064x}")


def _loop(tmp_path, store, trust, me):
    async def publish(raw: bytes) -> None:
        store.add(raw)

    settings = LoopSettings(bench_name="smoke", journal_dir=tmp_path / "research", runs_dir=tmp_path / "runs", default_base="smoke-tiny", hw_key=HW)
    return ResearchLoop(me, store, trust, publish, settings, runner=_runner)


def _incumbent_mean(store, trust) -> float:
    """The incumbent's posterior mean as the loop's next decision sees it."""
    post = estimate(EvidenceCache(store, benchmark("smoke").id).evidence(), trust.status, HW, budget_s=benchmark("smoke").budget_s, policy=TrustPolicy())
    return float(post.mean[post.index[post.incumbent()]])


def test_each_run_journals_its_promise_and_its_delivery_and_the_history_keeps_them_after_a_restart(tmp_path):
    me = g.identity(11)
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        store.add_signed(g.result(me, i=0, diff={}, val_bpb=2.5))
        store.add_signed(g.result(me, i=1, diff={}, val_bpb=2.52))
        loop = _loop(tmp_path, store, trust, me)
        ends = []
        for _ in range(3):
            before = _incumbent_mean(store, trust)
            end = trio.run(loop.step)
            assert end["status"] == "ok"
            # delivered: the incumbent's mean before the choice minus what the run measured
            assert end["realised"] == pytest.approx(before - MEASURED, abs=1e-12)
            assert math.isfinite(end["predicted"])
            ends.append(end)
        # a fresh journal over the same file (a restart) gives the meta level the same figures
        history = Journal(tmp_path / "research" / "journal.jsonl").history()
        assert [(o.predicted, o.realised) for o in history] == [(e["predicted"], e["realised"]) for e in ends]
        assert [o.operator for o in history] == [s["operator"] for s in Journal(tmp_path / "research" / "journal.jsonl").starts()]


def test_a_run_that_promised_nothing_or_failed_keeps_no_figures_and_old_journals_still_read(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    p = make_proposal("smoke-tiny", BROKEN, (), "mutate")
    journal.start(0, proposal=p, seed=1, run_dir=str(tmp_path / "r0"))
    journal.end(0, status="failed", record=None, gain=0.0, won=False, note="refused")
    journal.start(1, proposal=p, seed=2, run_dir=str(tmp_path / "r1"))
    journal.end(1, status="ok", record="ab" * 32, gain=0.01, won=True, predicted=0.02, realised=math.nan)
    # a journal written before these figures existed, and one torn by hand: both read as nan
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write(json.dumps({"event": "start", "n": 2, "candidate": p.candidate, "operator": "mutate", "parents": [], "diff": {}}) + "\n")
        f.write(json.dumps({"event": "end", "n": 2, "status": "ok", "record": None, "gain": 0.0, "won": False, "predicted": "lots"}) + "\n")
    lines = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert "predicted" not in lines[1] and "realised" not in lines[1]
    assert lines[3]["predicted"] == 0.02 and "realised" not in lines[3]  # nan is not written (JSON has none)
    history = Journal(tmp_path / "journal.jsonl").history()
    assert math.isnan(history[0].predicted) and math.isnan(history[0].realised)
    assert history[1].predicted == 0.02 and math.isnan(history[1].realised)
    assert math.isnan(history[2].predicted) and math.isnan(history[2].realised)
    # only runs that kept both figures are charged by the meta level
    assert bandit.over_promise(history, ["mutate"]) == {"mutate": 0.0}


def test_the_meta_level_charges_an_operator_whose_journalled_runs_fell_short(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    p = make_proposal("smoke-tiny", {"num_layers": 5}, (), "recombine")
    for n, (promised, delivered) in enumerate([(0.03, -0.01), (0.02, -0.02), (0.04, 0.0)]):
        journal.start(n, proposal=p, seed=n, run_dir=str(tmp_path / f"r{n}"))
        journal.end(n, status="ok", record=None, gain=0.0, won=False, predicted=promised, realised=delivered)
    history = Journal(tmp_path / "journal.jsonl").history()
    charged = bandit.over_promise(history, ["recombine", "replicate"])
    # three shortfalls of 0.04 each, shrunk by two pseudo-runs: 0.12 / 5
    assert np.isclose(charged["recombine"], 0.12 / 5) and charged["replicate"] == 0.0

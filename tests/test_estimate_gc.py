"""An estimate pauses cyclic garbage collection while it runs and leaves it as it found it."""

from __future__ import annotations

import gc

from p2pgolf.pool import estimator
from p2pgolf.pool.evidence import Evidence, result_evidence
from p2pgolf.pool.trust_weights import static_status

ME = "aa" * 32


def test_an_estimate_runs_with_collection_paused_and_restores_the_setting(monkeypatch):
    evidence = Evidence(tuple(result_evidence(f"{i:064x}", base="smoke-tiny", diff={"matrix_lr": 0.001 * (i + 1)}, author=ME, hw="cpu:a:x1", val_bpb=2.0 + 0.01 * i, budget_s=60.0) for i in range(3)))
    seen = []
    real = estimator._estimate
    monkeypatch.setattr(estimator, "_estimate", lambda *a: (seen.append(gc.isenabled()), real(*a))[1])
    was = gc.isenabled()
    try:
        for start in (True, False):
            gc.enable() if start else gc.disable()
            post = estimator.estimate(evidence, static_status(ME), "cpu:a:x1")
            assert len(post.candidates) == 3 and gc.isenabled() == start
    finally:
        gc.enable() if was else gc.disable()
    assert seen == [False, False]

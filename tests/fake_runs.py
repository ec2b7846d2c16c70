"""What the trainer's runner returns for a finished run, without training: for research-loop
tests that exercise choosing, journalling and publishing rather than the trainer."""

from __future__ import annotations

from typing import Any

import recordgen as g
from p2pgolf.protocol.benchmarks import benchmark


class Finished:
    """The runner's outcome of a run that ended normally."""

    status = "ok"

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result


def finished(bench_name: str, base: str, diff, seed: int, *, val_bpb: float = 2.45, artifact_sha256: str | None = None, trainer: str = "test/0") -> Finished:
    """A CPU run's result as the trainer writes it, measuring `val_bpb`."""
    bench = benchmark(bench_name)
    return Finished({
        "bench": bench.id, "bench_name": bench.name, "base": base, "diff": dict(diff), "seed": seed, "budget_s": bench.budget_s,
        "hw": g.CPU.to_wire(), "metrics": {"val_bpb": val_bpb, "val_loss": 1.7, "steps": 25, "train_tokens": 102400, "artifact_bytes": 1, "eval_tokens": 1, "eval_partial": True},
        "artifact_sha256": artifact_sha256, "trainer": trainer, "status": "ok", "error": None, "parents": [], "note": "", "created_ms": g.T0 + seed,
    })  # fmt: skip

"""Shared pieces of the proposer tests: a fake trainer whose val_bpb follows the diff, a loop
with a seeded pool, and small proposer programs written into the test's directory."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from p2pgolf.node.research_loop import LoopSettings, ResearchLoop
from p2pgolf.protocol.benchmarks import benchmark
from records_factory import H100

BENCH = "smoke"
HW = "cpu:Test CPU:x2"


class FakeOutcome:
    status = "ok"

    def __init__(self, result):
        self.result = result


def fake_runner(bench_name, base, diff, *, seed, out_dir, **kw):
    """A run without training: val_bpb 2.5, less 0.01 per knob changed (deterministic)."""
    bench = benchmark(bench_name)
    bpb = 2.5 - 0.01 * len(diff)
    return FakeOutcome({
        "bench": bench.id, "bench_name": bench_name, "base": base, "diff": dict(diff), "seed": seed, "budget_s": bench.budget_s,
        "hw": {"accel": "cpu", "model": "Test CPU", "count": 2, "memory_mib": 24000}, "tokenizer": bench.tokenizer,
        "metrics": {"val_bpb": bpb, "val_loss": bpb * 0.69, "steps": 10, "train_tokens": 4096, "artifact_bytes": 1000, "eval_tokens": 4096, "eval_partial": False},
        "artifact_sha256": None, "trainer": "test/0", "status": "ok", "note": "",
    })  # fmt: skip


def make_loop(tmp_path: Path, store, trust, me, n: int, proposers=()) -> ResearchLoop:
    async def publish(raw: bytes) -> None:
        store.add(raw)

    settings = LoopSettings(bench_name=BENCH, journal_dir=tmp_path / "research", runs_dir=tmp_path / "runs", default_base="smoke-tiny", max_experiments=n, hw_key=HW)
    return ResearchLoop(me, store, trust, publish, settings, runner=fake_runner, proposers=tuple(proposers))


def peer_idea(peer):
    """A peer's result on other hardware: an idea not yet tested here."""
    from records_factory import signed_result

    return signed_result(peer, diff={"activation": "swiglu"}, val_bpb=2.2, hw=H100, note="swiglu helped on my H100")


def program(tmp_path: Path, name: str, body: str) -> tuple[str, ...]:
    """A proposer program: `body` is Python run with the situation already read into `situation`."""
    path = tmp_path / f"{name}.py"
    path.write_text("import json, sys\nsituation = json.load(sys.stdin)\n" + textwrap.dedent(body))
    return (sys.executable, str(path))

"""Was a run's measurement honest about its config, or about the machine's load?

A run on a machine that others were using (or a GPU that throttled) trains far fewer tokens in
its budget, so its score says more about the load than about the config. Two signs, either of
which marks a run degraded:
- the CPU share the trainer got while it was ready to run (trainer.cpu_share) is below
  MIN_CPU_SHARE: other programs kept it off the cores;
- its tokens per second are below MIN_USUAL_RATIO of this node's usual speed for the same
  hardware class and model shape (the median of its earlier undegraded runs,
  trainer.run_history): contention the CPU share cannot see (a throttled or shared GPU).

Guarantees: `judge_throughput` is a pure function of its arguments; a degraded judgement always
carries a one-line reason that names the measured and the expected figure; with no CPU share
and no history it never marks a run degraded.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2pgolf.trainer.run_history import PastRun

__all__ = ["MIN_CPU_SHARE", "MIN_USUAL_RATIO", "Throughput", "judge_throughput", "NOTE_PREFIX"]

MIN_CPU_SHARE = 0.4  # below this, others kept the trainer off the cores more than it ran
MIN_USUAL_RATIO = 0.5  # below this fraction of the usual tokens/s, the run is degraded
NOTE_PREFIX = "degraded: "  # how a result's note says so (peers read it; pool.estimator weighs it)


@dataclass(frozen=True)
class Throughput:
    """How fast a run trained, against what this machine usually does."""

    tokens_per_s: float
    cpu_share: float | None
    usual_tokens_per_s: float | None  # median of comparable earlier runs, if any
    usual_runs: int
    degraded: bool
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "tokens_per_s": self.tokens_per_s,
            "cpu_share": self.cpu_share,
            "usual_tokens_per_s": self.usual_tokens_per_s,
            "usual_runs": self.usual_runs,
            "degraded": self.degraded,
            "reason": self.reason,
        }

    def note(self) -> str:
        """The result note that carries the judgement to peers ("" when not degraded)."""
        return f"{NOTE_PREFIX}{self.reason}"[:280] if self.degraded else ""


def judge_throughput(tokens_per_s: float, cpu_share: float | None, hw_key: str, shape: str, history: Sequence[PastRun]) -> Throughput:
    """The judgement of one run's speed (see the module docstring)."""
    comparable = [p.tokens_per_s for p in history if p.hw_key == hw_key and p.shape == shape and not p.degraded]
    usual = statistics.median(comparable) if comparable else None
    reasons = []
    if cpu_share is not None and cpu_share < MIN_CPU_SHARE:
        reasons.append(f"the trainer got {cpu_share:.0%} of the CPU time it was ready to use (other programs competed for the cores)")
    if usual is not None and tokens_per_s < MIN_USUAL_RATIO * usual:
        reasons.append(
            f"{tokens_per_s:,.0f} tokens/s is {tokens_per_s / usual:.0%} of this node's usual {usual:,.0f} "
            f"for this hardware and model shape ({len(comparable)} earlier run{'s' if len(comparable) != 1 else ''})"
        )
    return Throughput(
        tokens_per_s=float(tokens_per_s),
        cpu_share=None if cpu_share is None else round(float(cpu_share), 4),
        usual_tokens_per_s=usual,
        usual_runs=len(comparable),
        degraded=bool(reasons),
        reason="; ".join(reasons) if reasons else None,
    )

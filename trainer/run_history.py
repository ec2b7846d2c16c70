"""This node's own memory of how fast its past runs trained: the run directories beside a new one.

A node keeps its runs in one folder (HOME/runs); each finished run's result.json names its
hardware class, its config and (since throughput is recorded) its tokens per second. This is
the history that step-time estimates and the degraded check compare against: the same machine,
measured the same way. No tensor library here.

Guarantees: `past_runs` never raises for a damaged, foreign or half-written run directory (it
is skipped), reads at most `limit` of the most recent ones (by name: run directories are named
by start time), and returns only finished runs ("ok" or "oversize") with a positive speed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from p2pgolf.protocol import knobs

__all__ = ["PastRun", "past_runs", "HISTORY_LIMIT"]

HISTORY_LIMIT = 200


@dataclass(frozen=True)
class PastRun:
    """One finished run, as far as speed goes."""

    run_dir: Path
    hw_key: str  # protocol HardwareClass.key
    shape: str  # protocol.knobs.throughput_shape of its config
    tokens_per_s: float
    flops_per_s: float  # tokens_per_s times the config's training FLOPs per token
    degraded: bool


def past_runs(runs_dir: str | os.PathLike | None, *, limit: int = HISTORY_LIMIT, exclude: str | os.PathLike | None = None) -> list[PastRun]:
    """The finished runs among the `limit` most recent directories of `runs_dir` (none if it is
    None or missing), leaving out `exclude` (the run being judged)."""
    if runs_dir is None:
        return []
    root = Path(runs_dir)
    try:
        names = sorted((e.name for e in os.scandir(root) if e.is_dir()), reverse=True)[:limit]
    except OSError:
        return []
    skip = Path(exclude).resolve() if exclude is not None else None
    out = []
    for name in names:
        run_dir = root / name
        if skip is not None and run_dir.resolve() == skip:
            continue
        past = _read(run_dir)
        if past is not None:
            out.append(past)
    return out


def _read(run_dir: Path) -> PastRun | None:
    try:
        result = json.loads((run_dir / "result.json").read_text())
        if result.get("status") not in ("ok", "oversize"):
            return None
        config = knobs.resolve(result["base"], result["diff"])
        hw = result["hw"]
        hw_key = f"{hw['accel']}:{hw['model']}:x{hw['count']}"
        throughput = result.get("throughput") or {}
        tokens_per_s = throughput.get("tokens_per_s")
        if tokens_per_s is None:  # a run from before throughput was recorded
            metrics = json.loads((run_dir / "metrics.json").read_text())
            tokens_per_s = metrics.get("tokens_per_s")
        tokens_per_s = float(tokens_per_s)
    except Exception:  # unreadable, foreign or from an older layout: not history
        return None
    if not tokens_per_s > 0:
        return None
    return PastRun(
        run_dir=run_dir,
        hw_key=hw_key,
        shape=knobs.throughput_shape(config),
        tokens_per_s=tokens_per_s,
        flops_per_s=tokens_per_s * knobs.training_flops_per_token(config),
        degraded=bool(throughput.get("degraded")),
    )

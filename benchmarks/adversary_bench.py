"""What each attack of issue 20 costs a victim node, beside the same figure with no attack.

Each attack lives in benchmarks/adversary/<part>.py, whose `measure(quick=...)` runs it and
the matching no-attack baseline in the same run and returns a dict of figures; a figure
`x_baseline` is `x` measured with no attack. This script runs every part, prints one table
(part, figure, under attack, baseline, ratio, goal, met) and, with --json, one JSON object: the
goals' figures at the top level, every part's figures under its name.

The goals (issue 20), fixed before measuring:
- sybil_share, extreme_claim_share, self_attesting_liar_share <= 0.05 (share of the victim's
  experiments that went to the attacker's candidates);
- failed_candidate_repicks == 0;
- decision_s_100k < 1 (one estimate + choice on 100,000 records over 20,000 candidates);
- honest_p99_under_flood_s < 2 (an honest record's gossip p99 while unknown keys flood
  10,000 records/s);
- rss_mb_under_frames < 200 (RSS growth under hostile sync frames);
- unknown_disk_bytes <= unknown_quota_bytes;
- catchup_100k_s < 15 (a late joiner gets 100,000 records, every one verified);
- honest_p99_under_sybil_flood_s < 2 (the same flood spread over 250 peer ids, each under the
  per-peer rate; the honest records are by the key of the honest peer, which the victim pins).

Parts: claims (the simulator, many seeds), live (the same attacks against real join processes
that train: what the victim ran, decision latency, gossip p99, peak RSS, disk, beside a
no-attack victim), scale, edge (floods, frames, quota, catch-up), streams (one peer opening
10,000 streams), flood (only edge's two floods, one peer and 250 peer ids, in one run; not
with `edge`, which runs them too: both would report the same keys).

    .venv/bin/python benchmarks/adversary_bench.py [--quick] [--only claims,live,scale,edge,streams,flood] [--json]
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))

PARTS = ("claims", "live", "scale", "edge", "streams", "flood")
ENTRY = {"flood": ("edge", "measure_floods")}  # part -> (module, function) where not (part, "measure")
GOALS = {
    "sybil_share": ("<=", 0.05),
    "extreme_claim_share": ("<=", 0.05),
    "self_attesting_liar_share": ("<=", 0.05),
    "failed_candidate_repicks": ("==", 0),
    "decision_s_100k": ("<", 1.0),
    "honest_p99_under_flood_s": ("<", 2.0),
    "rss_mb_under_frames": ("<", 200.0),
    "unknown_disk_bytes": ("<=", "unknown_quota_bytes"),
    "catchup_100k_s": ("<", 15.0),
    "honest_p99_under_sybil_flood_s": ("<", 2.0),
}
# the real-process figures, at the top level of --json beside the goals' (no goal of their own:
# one victim per scenario, a handful of experiments; the simulator's shares are the statistic)
LIVE_TOP = (
    "live_sybil_share", "live_extreme_claim_share", "live_self_attesting_liar_share", "live_no_attack_share",
    "streams_held_by_one_peer", "streams_held_by_one_peer_baseline", "honest_streams_s", "honest_streams_s_baseline",
    "unknown_honest_p99_under_sybil_flood_s", "sybil_flood_unknown_disk_bytes",
)  # fmt: skip


def met(name: str, figures: dict) -> bool | None:
    if name not in GOALS or figures.get(name) is None:
        return None
    op, bound = GOALS[name]
    bound = figures.get(bound) if isinstance(bound, str) else bound
    if bound is None:
        return None
    value = figures[name]
    return {"<=": value <= bound, "<": value < bound, "==": value == bound}[op]


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


@click.command()
@click.option("--quick", is_flag=True, help="Smaller runs (a smoke check of the benchmark itself).")
@click.option("--only", default=",".join(p for p in PARTS if p != "flood"), show_default=True, help="Comma-separated parts to run (flood: the two floods alone).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def main(quick: bool, only: str, as_json: bool) -> None:
    parts: dict[str, dict] = {}
    seconds: dict = {}
    for part in [p.strip() for p in only.split(",") if p.strip()]:
        if part not in PARTS:
            raise click.BadParameter(f"unknown part {part!r}; expected some of {', '.join(PARTS)}", param_hint="--only")
        started = time.monotonic()
        module, function = ENTRY.get(part, (part, "measure"))
        parts[part] = getattr(importlib.import_module(f"adversary.{module}"), function)(quick=quick)
        seconds[part] = round(time.monotonic() - started, 1)
    goals = {name: ok for figures in parts.values() for name in GOALS if (ok := met(name, figures)) is not None}
    if as_json:
        # the figures at the top level; each part's own (settings included) under its name
        top = {name: figures[name] for figures in parts.values() for name in (*GOALS, *LIVE_TOP) if name in figures}
        print(json.dumps({"machine": machine(), "quick": quick, "seconds": seconds, **top, "parts": parts, "goals_met": goals}, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"adversary_bench on {machine()}; quick={quick}; seconds per part {seconds}")
    for column in ("part", "figure", "under attack", "no attack", "ratio", "goal", "met"):
        table.add_column(column)
    for part, figures in parts.items():
        for name, value in sorted(figures.items()):
            if name.endswith("_baseline") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            base = figures.get(f"{name}_baseline")
            ratio = f"{value / base:.2f}" if isinstance(base, (int, float)) and base else ""
            goal = " ".join(str(x) for x in GOALS[name]) if name in GOALS else ""
            ok = goals.get(name)
            table.add_row(part, name, f"{value:.4g}", "" if base is None else f"{base:.4g}", ratio, goal, "" if ok is None else ("yes" if ok else "NO"))
    Console().print(table)

if __name__ == "__main__":
    main()

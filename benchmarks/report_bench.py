"""How long `p2pgolf report` takes on pools of 1,000, 10,000 and 100,000 records.

Each pool is made once (node/views/sim_pool.random_walk_pool: 12 nodes on three hardware
classes hill-climbing the simulator's landscape with the real mutate/recombine operators and
replicating their bests, every record signed with a real key), kept in --cache, and the whole
report is timed on it: reading the pool, the statistics, four matplotlib figures, the HTML and
PNG files (node/views/build_report.make_report). matplotlib is imported before the timing.
Baseline in the same run: reading the same pool through PoolStore.query (the store's own full
decode of every record), the floor any view of every record pays; the ratio is report / baseline.
Wall time and this process's CPU time are both shown (a loaded machine stretches the first).
Goal: under 10 s at 100,000 records.

    .venv/bin/python benchmarks/report_bench.py [--sizes 1000,10000,100000] [--cache DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_S = 10.0
GOAL_AT = 100_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="pool sizes, comma-separated")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "p2pgolf-report-bench", help="where generated pools are kept between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if any(s < 1 for s in sizes):
        parser.error("--sizes must be positive")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  # imported once, before any timing

    from p2pgolf.node.home import Home
    from p2pgolf.node.views import sim_pool
    from p2pgolf.node.views.build_report import make_report
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.protocol.benchmarks import benchmark

    bench = benchmark(sim_pool.BENCH)
    rows = []
    for size in sizes:
        home = Home(args.cache / f"pool-{size}-seed{args.seed}")
        generated_s = 0.0
        if not (home.root / "done").exists():
            home.root.mkdir(parents=True, exist_ok=True)
            if home.pool_db.exists():
                home.pool_db.unlink()
            started = time.perf_counter()
            sim_pool.random_walk_pool(home.pool_db, size, seed=args.seed)
            generated_s = time.perf_counter() - started
            (home.root / "done").write_text(str(size))
        started = time.perf_counter()
        with PoolStore(home.pool_db) as store:
            decoded = len(store.query(bench=bench.id))
        baseline_s = time.perf_counter() - started
        out = Path(tempfile.mkdtemp(prefix="p2pgolf-report-"))
        wall, cpu = time.perf_counter(), time.process_time()
        written, data = make_report(home, bench, out)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows.append({
            "records": data.records, "decoded_by_store": decoded, "generated_s": round(generated_s, 2), "baseline_read_s": round(baseline_s, 3),
            "report_wall_s": round(wall, 3), "report_cpu_s": round(cpu, 3), "ratio_to_baseline": round(wall / baseline_s, 2) if baseline_s else None,
            "html_bytes": written.html.stat().st_size, "figures": len(written.pngs),
        })  # fmt: skip
    at_goal = [r for r in rows if r["records"] >= GOAL_AT]
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},  # fmt: skip
        "settings": {"sizes": sizes, "seed": args.seed, "nodes": 12, "hardware_classes": 3, "cache": str(args.cache)},
        "runs": rows,
        "goal_s": GOAL_S,
        "goal_met": (all(r["report_wall_s"] < GOAL_S for r in at_goal) if at_goal else None),
        "goal_met_cpu": (all(r["report_cpu_s"] < GOAL_S for r in at_goal) if at_goal else None),
    }
    if args.json:
        print(json.dumps(result))
        return
    m = result["machine"]
    print(f"machine: {m['cpu']} ({m['cpus']} cpus), {m['platform']}, Python {m['python']}, load average {m['load_avg_1m']}")
    print(f"settings: sizes {sizes}, seed {args.seed}, 12 nodes on 3 hardware classes; pools cached in {args.cache}")
    print(f"{'records':>9} {'baseline read s':>16} {'report wall s':>14} {'report cpu s':>13} {'ratio':>7} {'html KB':>8}")
    for r in rows:
        print(f"{r['records']:>9,} {r['baseline_read_s']:>16.3f} {r['report_wall_s']:>14.3f} {r['report_cpu_s']:>13.3f} {r['ratio_to_baseline']:>7.2f} {r['html_bytes'] / 1024:>8.0f}")
    if at_goal:
        print(f"goal: under {GOAL_S:g} s at {GOAL_AT:,} records: wall {'met' if result['goal_met'] else 'NOT met'}, cpu {'met' if result['goal_met_cpu'] else 'NOT met'}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()

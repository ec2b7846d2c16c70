"""Benchmark: does searching together beat searching alone, and does trust keep it honest?

Runs the simulator in pool/simulation.py (the real estimator and bandit over a synthetic
Parameter Golf landscape defined on the real knobs) in six modes and prints one table:
isolated keep/revert hill climbing, isolated bandit, collective with naive pooling, collective
with hardware-adjusted trust, and the same with one unpinned malicious node publishing fake
wins, unblocked and blocked. Means over seeds with their spread; ratios are against baselines
measured in the same run.

    .venv/bin/python benchmarks/sim_collective.py            # 20 seeds, 4 nodes, 84 experiments
    .venv/bin/python benchmarks/sim_collective.py --seeds 5 --json
"""

from __future__ import annotations

import os

# one BLAS thread: the matrices are small and a shared machine thrashes with more
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pool.simulation import HARDWARE, MODES, SimSettings, experiments_to_reach, mean_curve_crossing, run_mode, summarise  # noqa: E402

LABELS = {
    "isolated_hillclimb": "1. isolated keep/revert hill climbing",
    "isolated_bandit": "2. isolated bandit",
    "naive": "3. collective, naive pooling",
    "trust": "4. collective, hardware-adjusted trust",
    "malicious": "5a. + malicious node (unpinned)",
    "malicious_blocked": "5b. + malicious node (blocked)",
}


@click.command()
@click.option("--seeds", default=20, show_default=True, help="number of seeds (landscapes and noise)")
@click.option("--first-seed", default=0, show_default=True)
@click.option("--nodes", "-m", default=4, show_default=True, help="honest nodes (M)")
@click.option("--experiments", "-k", default=84, show_default=True, help="experiments per node (K)")
@click.option("--hardware", default="mixed", show_default=True, help="'mixed' (all classes, round robin) or one class key")
@click.option("--jobs", "-j", default=min(2, os.cpu_count() or 1), show_default=True, help="worker processes (runs are independent and seeded)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def main(seeds: int, first_seed: int, nodes: int, experiments: int, hardware: str, jobs: int, as_json: bool) -> None:
    known = [h.key for h in HARDWARE]
    if hardware == "mixed":
        classes = tuple(known)
    elif hardware in known:
        classes = (hardware,)
    else:
        raise click.BadParameter(f"{hardware!r} is not 'mixed' or one of: {', '.join(known)}", param_hint="--hardware")
    if seeds < 1 or nodes < 1 or experiments < 2:
        raise click.BadParameter("need --seeds >= 1, --nodes >= 1 and --experiments >= 2")
    settings = SimSettings(nodes=nodes, experiments=experiments, hardware=classes)
    started = time.time()
    tasks = [(mode, seed) for seed in range(first_seed, first_seed + seeds) for mode in MODES]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(_run, tasks, [settings] * len(tasks)))
    else:
        done = [_run(task, settings) for task in tasks]
    runs = {mode: [] for mode in MODES}
    for (mode, _), run in zip(tasks, done):
        runs[mode].append(run)
    elapsed = time.time() - started
    summaries = {mode: summarise(rs) for mode, rs in runs.items()}
    reach = {}
    for mode in MODES:
        hits = [h for c, ref in zip(runs[mode], runs["isolated_hillclimb"]) for h in experiments_to_reach(c, ref)]
        reach[mode] = (float(np.mean(hits)), float(np.std(hits)), sum(h > experiments for h in hits) / len(hits), mean_curve_crossing(runs[mode], runs["isolated_hillclimb"]))
    naive_regret = summaries["naive"].regret
    result = {
        "experiments_to_isolated_best": reach["trust"][0],
        "experiments_to_isolated_best_mean_curve": reach["trust"][3],
        "winner_share": summaries["trust"].winner_share,
        "winner_share_strict": summaries["trust"].winner_share_strict,
        "regret_vs_naive": summaries["trust"].regret / naive_regret if naive_regret > 0 else None,
        "malicious_share": summaries["malicious"].malicious_share,
        "malicious_share_blocked": summaries["malicious_blocked"].malicious_share,
        "settings": {"seeds": seeds, "first_seed": first_seed, "nodes": nodes, "experiments": experiments, "hardware": list(classes), "jobs": jobs},
        "machine": _machine(),
        "seconds": round(elapsed, 1),
        "modes": {
            mode: {
                "final_true_bpb": s.final_true,
                "final_true_bpb_sd": s.final_true_sd,
                "simple_regret": s.regret,
                "simple_regret_sd": s.regret_sd,
                "winner_share": s.winner_share,
                "winner_share_sd": s.winner_share_sd,
                "winner_share_strict": s.winner_share_strict,
                "malicious_share": s.malicious_share,
                "experiments_to_isolated_best": reach[mode][0],
                "experiments_to_isolated_best_sd": reach[mode][1],
                "never_reached": reach[mode][2],
                "experiments_to_isolated_best_mean_curve": reach[mode][3],
            }
            for mode, s in summaries.items()
        },
    }
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    _table(result, summaries, reach, experiments)


def _run(task: tuple[str, int], settings: SimSettings):
    mode, seed = task
    return run_mode(mode, seed, settings)


def _machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, numpy {np.__version__}"


def _table(result, summaries, reach, experiments) -> None:
    from rich.console import Console
    from rich.table import Table

    # piped output would otherwise be squeezed to 80 columns and every cell wrapped
    console = Console() if sys.stdout.isatty() else Console(width=170)
    s = result["settings"]
    title = f"Collective search: {s['nodes']} nodes x {s['experiments']} experiments, {s['seeds']} seeds, hardware: {', '.join(h.split(':')[1] for h in s['hardware'])}"
    table = Table(title=title, caption=f"{result['machine']}; {result['seconds']} s. Mean ± sd over seeds and nodes.")
    table.add_column("mode")
    table.add_column("final true bpb", justify="right")
    table.add_column("simple regret", justify="right")
    table.add_column("regret / naive", justify="right")
    table.add_column(f"exps to isolated@{experiments} (per node)", justify="right")
    table.add_column("(mean node)", justify="right")
    table.add_column("winner share (lineage)", justify="right")
    table.add_column("winner share (exact)", justify="right")
    table.add_column("on fakes", justify="right")
    naive = summaries["naive"].regret
    for mode, sm in summaries.items():
        mean, sd, never, curve = reach[mode]
        table.add_row(
            LABELS[mode],
            f"{sm.final_true:.4f} ± {sm.final_true_sd:.4f}",
            f"{sm.regret:.4f} ± {sm.regret_sd:.4f}",
            f"{sm.regret / naive:.2f}" if naive > 0 else "-",
            f"{mean:.1f} ± {sd:.1f}" + (f" ({never:.0%} never)" if never else ""),
            f"{curve:.1f}",
            f"{sm.winner_share:.0%} ± {sm.winner_share_sd:.0%}",
            f"{sm.winner_share_strict:.0%}",
            f"{sm.malicious_share:.1%}",
        )
    console.print(table)
    goals = [
        ("experiments to isolated best <= K/M (judged: per node, mean of hitting times, never = K+1)", result["experiments_to_isolated_best"], result["experiments_to_isolated_best"] <= s["experiments"] / s["nodes"]),
        ("experiments to isolated best <= K/M (mean node: crossing of mean curves)", result["experiments_to_isolated_best_mean_curve"], result["experiments_to_isolated_best_mean_curve"] <= s["experiments"] / s["nodes"]),
        ("winner share >= 49% (judged: lineage; exact candidate only: " + f"{result['winner_share_strict']:.0%})", result["winner_share"], result["winner_share"] >= 0.49),
        ("regret vs naive <= 0.5", result["regret_vs_naive"], result["regret_vs_naive"] is not None and result["regret_vs_naive"] <= 0.5),
        ("malicious share <= 5%", result["malicious_share"], result["malicious_share"] <= 0.05),
        ("malicious share blocked = 0%", result["malicious_share_blocked"], result["malicious_share_blocked"] == 0.0),
    ]
    goal_table = Table(title="Goals")
    goal_table.add_column("goal")
    goal_table.add_column("value", justify="right")
    goal_table.add_column("met")
    for name, value, ok in goals:
        goal_table.add_row(name, "-" if value is None else f"{value:.3f}", "yes" if ok else "NO")
    console.print(goal_table)
    console.print(
        "Measures. exps to isolated@K (per node): for each node, the first experiment after which its incumbent's true bpb "
        "is at least as good as the isolated hill climbers' mean final on its hardware (K+1 if never); mean over nodes and seeds. "
        "(mean node): the same for the mean incumbent curve of each hardware class. "
        "Winner share (lineage): share of a node's experiments on its final incumbent or its ancestors (runs that built or "
        "confirmed the winner); (exact): on the final incumbent itself. Simple regret: final incumbent's true bpb minus the "
        "optimum on its hardware. On fakes: share of honest experiments that re-measure or build on a fake nothing trusted vouches for."
    )


if __name__ == "__main__":
    main()

"""Benchmark: does searching together beat searching alone, and does trust keep it honest?

Runs the simulator in pool/simulation.py (the real estimator and bandit over a synthetic
Parameter Golf landscape defined on the real knobs) in six modes and prints one table:
isolated keep/revert hill climbing, isolated bandit, collective with naive pooling, collective
with hardware-adjusted trust, and the same with one unpinned malicious node publishing fake
wins, unblocked and blocked. Means over seeds with their spread; ratios are against baselines
measured in the same run. "Experiments to match an isolated node" is judged against the isolated
node's expected result on each landscape (the mean of --reference-runs independent isolated
hill climbers per hardware class); the median run and the single paired run are printed beside it.

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

from pool.simulation import HARDWARE, MODES, SimSettings, experiments_to_reach, isolated_reference, mean_curve_crossing, run_mode, summarise  # noqa: E402

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
@click.option("--reference-runs", default=16, show_default=True, help="isolated hill climbers per hardware class whose mean final is the isolated node's expected result")
@click.option("--jobs", "-j", default=min(2, os.cpu_count() or 1), show_default=True, help="worker processes (runs are independent and seeded)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def main(seeds: int, first_seed: int, nodes: int, experiments: int, hardware: str, reference_runs: int, jobs: int, as_json: bool) -> None:
    known = [h.key for h in HARDWARE]
    if hardware == "mixed":
        classes = tuple(known)
    elif hardware in known:
        classes = (hardware,)
    else:
        raise click.BadParameter(f"{hardware!r} is not 'mixed' or one of: {', '.join(known)}", param_hint="--hardware")
    if seeds < 1 or nodes < 1 or experiments < 2 or reference_runs < 1:
        raise click.BadParameter("need --seeds >= 1, --nodes >= 1, --experiments >= 2 and --reference-runs >= 1")
    settings = SimSettings(nodes=nodes, experiments=experiments, hardware=classes)
    started = time.time()
    seed_range = range(first_seed, first_seed + seeds)
    tasks = [(mode, seed) for seed in seed_range for mode in MODES] + [("reference", seed) for seed in seed_range]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(_run, tasks, [settings] * len(tasks), [reference_runs] * len(tasks)))
    else:
        done = [_run(task, settings, reference_runs) for task in tasks]
    runs = {mode: [] for mode in (*MODES, "reference")}
    for (mode, _), run in zip(tasks, done):
        runs[mode].append(run)
    references = runs.pop("reference")
    elapsed = time.time() - started
    summaries = {mode: summarise(rs) for mode, rs in runs.items()}
    reach = {mode: _reach(runs[mode], references, runs["isolated_hillclimb"], experiments) for mode in MODES}
    naive_regret = summaries["naive"].regret
    result = {
        "experiments_to_isolated_best": reach["trust"]["mean"],
        "experiments_to_isolated_best_vs_median_run": reach["trust"]["median_run"],
        "experiments_to_isolated_best_vs_paired_run": reach["trust"]["paired_run"],
        "experiments_to_isolated_best_mean_curve": reach["trust"]["mean_curve"],
        "winner_share": summaries["trust"].winner_share,
        "winner_share_strict": summaries["trust"].winner_share_strict,
        "regret_vs_naive": summaries["trust"].regret / naive_regret if naive_regret > 0 else None,
        "malicious_share": summaries["malicious"].malicious_share,
        "malicious_share_blocked": summaries["malicious_blocked"].malicious_share,
        "settings": {"seeds": seeds, "first_seed": first_seed, "nodes": nodes, "experiments": experiments, "hardware": list(classes), "reference_runs": reference_runs, "jobs": jobs},
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
                "experiments_to_isolated_best": reach[mode]["mean"],
                "experiments_to_isolated_best_sd": reach[mode]["sd"],
                "never_reached": reach[mode]["never"],
                "experiments_to_isolated_best_vs_median_run": reach[mode]["median_run"],
                "never_reached_vs_median_run": reach[mode]["median_run_never"],
                "experiments_to_isolated_best_vs_paired_run": reach[mode]["paired_run"],
                "never_reached_vs_paired_run": reach[mode]["paired_run_never"],
                "experiments_to_isolated_best_mean_curve": reach[mode]["mean_curve"],
            }
            for mode, s in summaries.items()
        },
    }
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    _table(result, summaries, reach, experiments)


def _run(task: tuple[str, int], settings: SimSettings, reference_runs: int):
    mode, seed = task
    if mode == "reference":
        return isolated_reference(seed, settings, reference_runs)
    return run_mode(mode, seed, settings)


def _reach(collective, references, paired, experiments: int) -> dict[str, float]:
    """Experiments each node needs to match an isolated node, against three targets: the
    isolated node's expected result (mean of the reference runs: judged), the typical run
    (their median), and the one isolated run of the same seed and node slot (mode 1)."""
    never = experiments + 1

    def hits(refs, statistic):
        return np.array([h for c, ref in zip(collective, refs) for h in experiments_to_reach(c, ref, statistic)])

    expected, median_run, paired_run = hits(references, "mean"), hits(references, "median"), hits(paired, "mean")
    return {
        "mean": float(expected.mean()),
        "sd": float(expected.std()),
        "never": float(np.mean(expected >= never)),
        "median_run": float(median_run.mean()),
        "median_run_never": float(np.mean(median_run >= never)),
        "paired_run": float(paired_run.mean()),
        "paired_run_never": float(np.mean(paired_run >= never)),
        "mean_curve": mean_curve_crossing(collective, references),
    }


def _machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, numpy {np.__version__}"


def _table(result, summaries, reach, experiments) -> None:
    from rich.console import Console
    from rich.table import Table

    # piped output would otherwise be squeezed to 80 columns and every cell wrapped
    console = Console() if sys.stdout.isatty() else Console(width=200)
    s = result["settings"]
    title = f"Collective search: {s['nodes']} nodes x {s['experiments']} experiments, {s['seeds']} seeds, hardware: {', '.join(h.split(':')[1] for h in s['hardware'])}"
    table = Table(title=title, caption=f"{result['machine']}; {result['seconds']} s. Mean ± sd over seeds and nodes.")
    table.add_column("mode")
    table.add_column("final true bpb", justify="right")
    table.add_column("simple regret", justify="right")
    table.add_column("regret / naive", justify="right")
    table.add_column(f"exps to isolated@{experiments}: expected result (per node)", justify="right")
    table.add_column("vs median run", justify="right")
    table.add_column("vs paired run", justify="right")
    table.add_column("(mean node)", justify="right")
    table.add_column("winner share (lineage)", justify="right")
    table.add_column("winner share (exact)", justify="right")
    table.add_column("on fakes", justify="right")
    naive = summaries["naive"].regret
    for mode, sm in summaries.items():
        r = reach[mode]
        table.add_row(
            LABELS[mode],
            f"{sm.final_true:.4f} ± {sm.final_true_sd:.4f}",
            f"{sm.regret:.4f} ± {sm.regret_sd:.4f}",
            f"{sm.regret / naive:.2f}" if naive > 0 else "-",
            f"{r['mean']:.1f} ± {r['sd']:.1f}" + (f" ({r['never']:.0%} never)" if r["never"] else ""),
            f"{r['median_run']:.1f}" + (f" ({r['median_run_never']:.0%} never)" if r["median_run_never"] else ""),
            f"{r['paired_run']:.1f}" + (f" ({r['paired_run_never']:.0%} never)" if r["paired_run_never"] else ""),
            f"{r['mean_curve']:.1f}",
            f"{sm.winner_share:.0%} ± {sm.winner_share_sd:.0%}",
            f"{sm.winner_share_strict:.0%}",
            f"{sm.malicious_share:.1%}",
        )
    console.print(table)
    share = s["experiments"] / s["nodes"]
    goals = [
        ("experiments to isolated best <= K/M (judged: per node, never = K+1, against the isolated node's expected result)", result["experiments_to_isolated_best"], result["experiments_to_isolated_best"] <= share),
        ("experiments to isolated best <= K/M (per node, against the median isolated run)", result["experiments_to_isolated_best_vs_median_run"], result["experiments_to_isolated_best_vs_median_run"] <= share),
        ("experiments to isolated best <= K/M (per node, against the one isolated run of the same seed and slot)", result["experiments_to_isolated_best_vs_paired_run"], result["experiments_to_isolated_best_vs_paired_run"] <= share),
        ("experiments to isolated best <= K/M (mean node: crossing of mean curves)", result["experiments_to_isolated_best_mean_curve"], result["experiments_to_isolated_best_mean_curve"] <= share),
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
        f"is at least as good as the isolated node's expected result on its hardware and landscape: the mean final of {s['reference_runs']} "
        "independent isolated hill climbers per class (K+1 if never); mean over nodes and seeds. vs median run: the same against "
        "their median (a typical isolated run). vs paired run: against the one isolated run of the same seed and node slot "
        "(mode 1; two runs averaged where two nodes share a class), which times the collective against that run's luck too. "
        "(mean node): the mean incumbent curve of each hardware class against the expected result. "
        "Winner share (lineage): share of a node's experiments on its final incumbent or its ancestors (runs that built or "
        "confirmed the winner); (exact): on the final incumbent itself. Simple regret: final incumbent's true bpb minus the "
        "optimum on its hardware. On fakes: share of honest experiments that re-measure or build on a fake nothing trusted vouches for."
    )


if __name__ == "__main__":
    main()

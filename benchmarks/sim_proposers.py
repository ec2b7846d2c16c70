"""Benchmark: does the meta level feed a good external proposer and starve a random one?

Runs pool/proposer_simulation.py (the real estimator and bandit, trusted nodes on mixed
hardware, the synthetic landscape of pool/simulation.py) with three proposers on the same
seeds: "good" (knows the landscape's structure: a stand-in for a good agent), "random"
(random configurations) and "none". Prints the share of experiments each proposer received
(overall and after the first 20 of each node) and the collective's final regret (true bpb above
the hardware's optimum, mean over nodes), means over seeds with the paired spread.

The statistics, fixed before measuring:
- good_ok: regret_good < regret_none, the paired difference (per seed) more than 2 standard
  errors below 0;
- random_share: experiments chosen by the random proposer / all experiments, from each node's
  experiment 21 on, pooled over nodes and seeds; random_share_ok: below 0.10;
- random_ok: regret_random - regret_none is at most `floor_cost` (what losing the floor's share
  of experiments costs: regret of "none" after (1 - min_share) of the experiments minus its
  final regret) plus 2 paired standard errors.

    .venv/bin/python benchmarks/sim_proposers.py                 # 20 seeds, 4 nodes, 84 experiments
    .venv/bin/python benchmarks/sim_proposers.py --seeds 3 --experiments 40 --json
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pgolf.pool.proposer_simulation import PROPOSER_MODES, run_proposers  # noqa: E402
from p2pgolf.pool.simulation import SimSettings  # noqa: E402

AFTER = 20  # the share is measured from each node's 21st experiment on


def _run(task):
    mode, seed, settings = task
    return run_proposers(mode, seed, settings)


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of a - b over seeds and its standard error."""
    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf


@click.command()
@click.option("--seeds", default=20, show_default=True)
@click.option("--first-seed", default=0, show_default=True)
@click.option("--nodes", "-m", default=4, show_default=True)
@click.option("--experiments", "-k", default=84, show_default=True)
@click.option("--jobs", "-j", default=1, show_default=True, help="worker processes (runs are independent and seeded)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def main(seeds: int, first_seed: int, nodes: int, experiments: int, jobs: int, as_json: bool) -> None:
    if seeds < 1 or nodes < 1 or experiments <= AFTER:
        raise click.BadParameter(f"need --seeds >= 1, --nodes >= 1 and --experiments > {AFTER}")
    settings = SimSettings(nodes=nodes, experiments=experiments)
    started = time.time()
    tasks = [(mode, seed, settings) for seed in range(first_seed, first_seed + seeds) for mode in PROPOSER_MODES]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(_run, tasks))
    else:
        done = [_run(t) for t in tasks]
    runs = {mode: [r for r in done if r.mode == mode] for mode in PROPOSER_MODES}
    regret = {mode: [r.regret() for r in rs] for mode, rs in runs.items()}
    floor = settings.bandit.min_share
    at_floor = [r.regret_at(int(round((1.0 - floor) * experiments))) for r in runs["none"]]
    floor_cost = float(np.mean(at_floor) - np.mean(regret["none"]))

    def pooled_share(mode: str, after: int) -> float:
        ops = [o for r in runs[mode] for t in r.traces for o in t.operators[after:]]
        return sum(o.startswith("proposer:") for o in ops) / max(1, len(ops))

    def pooled_share_first(mode: str) -> float:
        ops = [o for r in runs[mode] for t in r.traces for o in t.operators[:AFTER]]
        return sum(o.startswith("proposer:") for o in ops) / max(1, len(ops))

    def by_hardware(rs) -> dict[str, float]:
        per: dict[str, list[float]] = {}
        for r in rs:
            for t in r.traces:
                per.setdefault(t.hw, []).append(t.incumbent_true[-1] - r.optimum[t.hw])
        return {hw: float(np.mean(v)) for hw, v in sorted(per.items())}

    good_d, good_se = paired(regret["good"], regret["none"])
    rand_d, rand_se = paired(regret["random"], regret["none"])
    out = {
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cpus",
        "seeds": seeds, "nodes": nodes, "experiments": experiments, "min_share": floor,
        "regret_none": float(np.mean(regret["none"])), "regret_good": float(np.mean(regret["good"])), "regret_random": float(np.mean(regret["random"])),
        "regret_none_sd": float(np.std(regret["none"])), "regret_good_sd": float(np.std(regret["good"])), "regret_random_sd": float(np.std(regret["random"])),
        "good_minus_none": good_d, "good_minus_none_se": good_se, "random_minus_none": rand_d, "random_minus_none_se": rand_se,
        "floor_cost": floor_cost,
        "good_share": pooled_share("good", 0), "good_share_after_20": pooled_share("good", AFTER),
        "random_share_all": pooled_share("random", 0), "random_share": pooled_share("random", AFTER),
        "good_empty_calls": int(sum(t.empty_calls for r in runs["good"] for t in r.traces)),
        "random_calls": int(sum(t.calls for r in runs["random"] for t in r.traces)),
        "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    # where it happens: each proposer's share of the first 20 experiments and the regret per hardware class
    out["good_share_first_20"] = pooled_share_first("good")
    out["random_share_first_20"] = pooled_share_first("random")
    out["regret_by_hardware"] = {mode: by_hardware(rs) for mode, rs in runs.items()}
    out["good_ok"] = good_d + 2 * good_se < 0
    out["random_share_ok"] = out["random_share"] < 0.10
    out["random_ok"] = rand_d <= floor_cost + 2 * rand_se
    out["regret_ratio_good_vs_none"] = out["regret_good"] / out["regret_none"] if out["regret_none"] > 0 else math.nan
    if as_json:
        print(json.dumps(out, sort_keys=True))
        return
    print(f"sim_proposers: {out['machine']}; {seeds} seeds x {nodes} nodes x {experiments} experiments, floor (min_share) {floor}; {out['seconds']} s")
    print(f"{'proposer':<10} {'regret (bpb)':>16} {'vs none':>20} {'share':>8} {'share after 20':>15}")
    print(f"{'none':<10} {out['regret_none']:>9.4f} ± {out['regret_none_sd']:.4f} {'':>20} {'':>8} {'':>15}")
    print(f"{'good':<10} {out['regret_good']:>9.4f} ± {out['regret_good_sd']:.4f} {good_d:>+11.4f} ± {good_se:.4f} {out['good_share']:>8.3f} {out['good_share_after_20']:>15.3f}")
    print(f"{'random':<10} {out['regret_random']:>9.4f} ± {out['regret_random_sd']:.4f} {rand_d:>+11.4f} ± {rand_se:.4f} {out['random_share_all']:>8.3f} {out['random_share']:>15.3f}")
    print(f"share of the first {AFTER} experiments: good {out['good_share_first_20']:.3f}, random {out['random_share_first_20']:.3f}")
    for hw in out["regret_by_hardware"]["none"]:
        row = "  ".join(f"{mode} {out['regret_by_hardware'][mode][hw]:.4f}" for mode in PROPOSER_MODES)
        print(f"regret on {hw}: {row}")
    print(f"ratio regret good / none: {out['regret_ratio_good_vs_none']:.3f}; the floor's share costs {floor_cost:+.4f} bpb of regret without a proposer")
    print(f"goals: good lowers regret {out['good_ok']}; random under 10% after 20 {out['random_share_ok']}; random within its floor's cost {out['random_ok']}")


if __name__ == "__main__":
    main()

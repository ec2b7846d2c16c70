"""Benchmark: how many of the honest nodes' experiments do strangers' lies capture?

Runs pool/adversaries.py: a collective of honest nodes on mixed hardware that pin each other,
running the real estimator and bandit on the synthetic landscape of pool/simulation.py, while
an attacker with free keys gossips, every `every` rounds, a fake for one node's class:
"sybil" (50 fresh keys claim the same plausible fake), "extreme" (one fresh key claims
val_bpb = 1e-6), "liar" (one fresh key claims a plausible fake, reproduces it itself, and ten
more fresh keys reproduce it in agreement); and "none", no attack, on the same seeds in the
same run.

The statistics, fixed before measuring:
- captured share of an attack: experiments the honest nodes spent on fakes (re-measuring a fake
  record, building on one, or running a fake's candidate, while no honest node had yet measured
  that candidate) / all their experiments, pooled over the nodes of a seed; mean over seeds and
  its standard error. `sybil_share`, `extreme_claim_share`, `self_attesting_liar_share`; the same
  measure in the no-attack runs is `no_attack_share` (0 unless the measure is broken: there are
  no fakes to count).
- what the attack cost: the collective's final regret (true bpb of each node's final incumbent
  above its class's optimum, mean over nodes), per attack, and its paired difference from the
  no-attack run of the same seed (mean and standard error over seeds).
- goal: every captured share (mean over seeds) <= 0.05.

    .venv/bin/python benchmarks/adversary/claims.py             # 8 seeds, 4 nodes, 60 experiments
    .venv/bin/python benchmarks/adversary/claims.py --quick --json
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

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pgolf.pool.adversaries import ATTACKS, AttackSettings, run_attack  # noqa: E402
from p2pgolf.pool.simulation import SimSettings  # noqa: E402

SHARE_KEYS = {"none": "no_attack_share", "sybil": "sybil_share", "extreme": "extreme_claim_share", "liar": "self_attesting_liar_share"}
GOAL = 0.05


def _mean_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan


def _run(task):
    kind, seed, settings, attack = task
    r = run_attack(kind, seed, settings, attack)
    return kind, seed, r.captured_share(), r.regret()


def measure(seeds: int = 8, quick: bool = False, *, nodes: int | None = None, experiments: int | None = None, jobs: int = 1, first_seed: int = 0) -> dict:
    """Run every attack and the no-attack baseline on the same seeds; the figures of the module
    docstring as one dict. `quick`: 2 seeds of 3 nodes x 30 experiments (a smoke run)."""
    if quick:
        seeds, nodes, experiments = min(seeds, 2), nodes or 3, experiments or 30
    nodes, experiments = nodes or 4, experiments or 60
    if seeds < 1 or nodes < 1 or experiments < 2:
        raise ValueError(f"need seeds >= 1, nodes >= 1 and experiments >= 2, not {seeds}, {nodes}, {experiments}")
    settings = SimSettings(nodes=nodes, experiments=experiments)
    attack = AttackSettings()
    started = time.time()
    tasks = [(kind, seed, settings, attack) for seed in range(first_seed, first_seed + seeds) for kind in ATTACKS]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(_run, tasks))
    else:
        done = [_run(t) for t in tasks]
    share = {k: [s for kind, _, s, _ in done if kind == k] for k in ATTACKS}
    regret = {k: [g for kind, _, _, g in done if kind == k] for k in ATTACKS}
    out: dict = {
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cpus, python {platform.python_version()}",
        "seeds": seeds, "nodes": nodes, "experiments": experiments, "attack_every": attack.every, "sybil_keys": attack.keys,
        "liar_helpers": attack.helpers, "extreme_bpb": attack.extreme_bpb, "fake_gain": attack.gain, "goal": GOAL,
    }  # fmt: skip
    for kind in ATTACKS:
        m, se = _mean_se(share[kind])
        out[SHARE_KEYS[kind]], out[SHARE_KEYS[kind] + "_se"] = m, se
        out[f"regret_{kind}"] = float(np.mean(regret[kind]))
        if kind != "none":
            d, dse = _mean_se(list(np.asarray(regret[kind]) - np.asarray(regret["none"])))
            out[f"regret_{kind}_minus_none"], out[f"regret_{kind}_minus_none_se"] = d, dse
    out["shares_ok"] = all(out[SHARE_KEYS[k]] <= GOAL for k in ATTACKS if k != "none")
    out["seconds"] = round(time.time() - started, 1)
    return out


def print_table(out: dict) -> None:
    print(f"adversary/claims: {out['machine']}; {out['seeds']} seeds x {out['nodes']} nodes x {out['experiments']} experiments; "
          f"a fake every {out['attack_every']} rounds ({out['sybil_keys']} sybil keys, liar + {out['liar_helpers']} helpers, extreme {out['extreme_bpb']:g}); {out['seconds']} s")  # fmt: skip
    print(f"{'attack':<8} {'captured share':>18} {'regret (bpb)':>13} {'vs no attack':>20}")
    for kind in ATTACKS:
        key = SHARE_KEYS[kind]
        vs = "" if kind == "none" else f"{out[f'regret_{kind}_minus_none']:+.4f} ± {out[f'regret_{kind}_minus_none_se']:.4f}"
        print(f"{kind:<8} {out[key]:>9.3f} ± {out[key + '_se']:.3f} {out[f'regret_{kind}']:>13.4f} {vs:>20}")
    print(f"goal: every captured share <= {out['goal']}: {out['shares_ok']}")


def main(argv: list[str] | None = None) -> None:
    import click

    @click.command()
    @click.option("--seeds", default=8, show_default=True)
    @click.option("--first-seed", default=0, show_default=True)
    @click.option("--nodes", "-m", default=4, show_default=True)
    @click.option("--experiments", "-k", default=60, show_default=True)
    @click.option("--jobs", "-j", default=1, show_default=True, help="worker processes (runs are independent and seeded)")
    @click.option("--quick", is_flag=True, help="2 seeds of 3 nodes x 30 experiments")
    @click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
    def cli(seeds, first_seed, nodes, experiments, jobs, quick, as_json):
        out = measure(seeds, quick, nodes=None if quick else nodes, experiments=None if quick else experiments, jobs=jobs, first_seed=first_seed)
        if as_json:
            # one seed has no standard error: null, since NaN is not JSON
            print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}, sort_keys=True))
        else:
            print_table(out)

    cli.main(args=argv, standalone_mode=True)


if __name__ == "__main__":
    main()

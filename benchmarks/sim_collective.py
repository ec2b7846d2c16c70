"""Benchmark: does sharing pay against our own search alone, on every hardware class?

Runs the simulator (pool/simulation.py: the real estimator and bandit over synthetic Parameter
Golf landscapes defined on the real knobs) over the landscape family of pool/landscapes.py
(`FAMILY`: per-knob transfer that differs by class, interactions, a narrow optimum, a rank
reversal, heavy noise, two-node networks, 2-16 nodes, same-class swarms of 8) and judges the
collective with hardware-adjusted trust against the **isolated bandit**: the same estimator and
bandit on a node that sees only its own records. Isolated keep/revert hill climbing is kept
for reference.

Definitions (fixed before any figure was measured; see the issue 14 report for the baseline):

- Reference runs. For every landscape kind and seed, `--reference-runs` R (default 4)
  independent isolated-bandit nodes per hardware class, K experiments each, and 16 isolated
  hill climbers per class. The isolated bandit's *expected result* on (landscape, seed, class)
  is the mean true val_bpb of those R nodes' final incumbents after K experiments (K = 84).
  One reference serves every scenario of its landscape kind (an isolated node does not
  depend on the network around it).
- `exps_vs_isolated_bandit` (per scenario): for every collective node, the first experiment
  after which its incumbent's true val_bpb is at or below its class's isolated-bandit expected
  result on that landscape and seed; K+1 if never. Mean over the scenario's nodes and seeds,
  with the standard error over seeds (of each seed's node mean). The headline figure is the
  mean over the scenarios with 4 mixed-hardware nodes; `exps_vs_isolated_bandit_worst` is
  their largest. With R = 4 the target carries its own sampling noise, which (hitting times
  are convex in the target) pushes this figure up, never down: issue 5's notes measured 19.2
  against a 4-run mean and 16.1 against a 16-run mean on the same collective runs.
- Simple regret after K: a node's final incumbent's true val_bpb minus the landscape's optimum
  on its class. Per (scenario, class, seed): the collective's mean over its nodes of that
  class, and the isolated bandit's mean over its R reference nodes of that class.
- Paired difference per (scenario, class): mean over seeds of (collective regret - isolated
  regret) on the same seed, with its standard error (sd over seeds / sqrt(seeds)). Negative:
  sharing helped that class.
- `class_ratio` per (scenario, class): the collective's mean regret over seeds divided by the
  isolated bandit's on the same class, scenario and seeds. `worst_class_ratio`: the largest
  over every class of every scenario (below 1: no class was worse off for sharing).
- Per (scenario, class) also `exps_vs_isolated_bandit` over that class's nodes only.
- `paired_z` per (scenario, class): the paired difference over its standard error;
  `worst_class_paired_z`: the largest over every class of every scenario. Added after the
  --null measurement below showed `worst_class_ratio` above 1 by noise alone; it reads "no
  class worse off" against the seeds' own noise (at most 2: no class is worse off beyond two
  standard errors). `worst_class_ratio` is still reported and judged as the issue states it.
- `narrow_well` (scenarios on the narrow landscape; issue 14's finding 3): per seed, the share
  of nodes whose final incumbent's Muon momentum lies in the narrow optimum's well
  (`FamilyLandscape.in_narrow_well`), for the collective and for the isolated bandits of the
  same classes; means and the paired difference over seeds with its standard error.
- `replicate_share` (per scenario and headline over the 4-node mixed scenarios): the share of
  the collective's experiments that re-measure a candidate already established on the node's
  own hardware (operator "replicate", top-two confirmations included).
- `duplicate_share` (per scenario): the share of the collective's experiments that train a
  candidate another node of the same class trains in the same round (issue 14's finding 4:
  52% in a one-class swarm before nodes announced what they run).
- `malicious_share` per class: in the scenarios named by `--malicious` (mixed hardware, an
  extra unpinned node publishing fake wins every round), the share of each class's honest
  experiments that re-measure or build on a fake nothing trusted vouches for.
- Hill-climbing rows: the same hitting time against the isolated hill climbers' expected
  result (mean of 16 per class), for the collective and for the isolated bandit.

- `--null` (the noise floor): the collective's place is taken by isolated bandits on the same
  scenarios' nodes and landscapes, with node random streams the reference never used
  (`SimSettings.rng_stream`): no sharing at all, judged by the same statistic. Seeds 0-15 with
  confirm_cap 6 (issue 14, load average 2-3 on 2 cpus): exps_vs_isolated_bandit 50.4 over the six
  4-node mixed scenarios (43.1-58.5 each, standard errors 3.5-4.6), 51.1 on the same-class H100
  swarm of 8, 52.7 on the M2 one, 43.2 on two nodes; worst_class_ratio 1.48 (narrow, RTX 4090),
  above 1 on 6 of the 10 scenarios; worst_class_paired_z +1.8 (the same class). Before the cap
  (load 5-7): 45.8, and a worst ratio of 1.43. Most single class ratios are below 1 (one node of a
  class per seed against the mean of R: a right-skewed regret's small-sample mean is usually below
  its mean, now and then far above), the worst of ~28 is not. So "no class worse off" read as
  worst_class_ratio < 1 is failed by noise alone (by up to 0.48 at 16 seeds), while a tie's
  largest z stays below about 2.
- `--variant name=value[,...]` (repeatable): the collective again with those fields of
  SimSettings, EstimatorConfig or BanditConfig changed, on `--variant-family`'s scenarios, judged
  against the same references; `paired` gives, per seed, the mean over the variant's 4-node mixed
  scenarios of the variant's minus the default's exps_vs_isolated_bandit and mean final regret,
  with the mean and standard error over seeds.

Goals (issue 14, K = 84): 4 mixed nodes: exps_vs_isolated_bandit <= 42 (K/2) and every class
ratio < 1 on every scenario; same-class swarms of 8: exps_vs_isolated_bandit <= 21 (K/4);
malicious share <= 5% on every class. The class goal restated against the noise floor above
(what a demanding reader can test at 16 seeds): worst_class_paired_z <= 2.

    .venv/bin/python benchmarks/sim_collective.py                       # the whole family, 16 seeds
    .venv/bin/python benchmarks/sim_collective.py --family base,narrow --seeds 4 --json
    .venv/bin/python benchmarks/sim_collective.py --null --malicious ''            # no sharing: the noise floor
    .venv/bin/python benchmarks/sim_collective.py --first-seed 100 --seeds 8 --variant confirm_cap=6 --variant calibrate=true
"""

from __future__ import annotations

import os

# one BLAS thread: the matrices are small and a shared machine thrashes with more
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

from dataclasses import replace  # noqa: E402

from p2pgolf.pool.bandit import BanditConfig  # noqa: E402
from p2pgolf.pool.estimator import EstimatorConfig  # noqa: E402
from p2pgolf.pool.landscapes import FAMILY, SCENARIOS, Scenario  # noqa: E402
from p2pgolf.pool.simulation import HARDWARE, RunResult, SimSettings, experiments_to_reach, isolated_bandit_reference, isolated_reference, run_mode  # noqa: E402

HILL_REFERENCE_RUNS = 16
SHORT = {h.key: h.key.split(":")[1].replace("NVIDIA ", "").replace("GeForce ", "").replace(" 80GB HBM3", "") for h in HARDWARE}


def scenario_settings(scenario: Scenario, seed: int, experiments: int) -> SimSettings:
    classes = tuple(h.key for h in HARDWARE) if scenario.hardware == "mixed" else (HARDWARE[int(scenario.hardware)].key,)
    return SimSettings(nodes=scenario.nodes_for(seed), experiments=experiments, hardware=classes, landscape=scenario.landscape)


NULL_STREAM = 1  # the null collective's node random streams: independent of the reference's


def parse_variant(text: str) -> dict:
    """`name=value[,name=value...]` over the fields of SimSettings, EstimatorConfig and
    BanditConfig; values are numbers, inf, true/false."""
    out = {}
    fields = {**{f: "settings" for f in SimSettings.__dataclass_fields__}, **{f: "estimator" for f in EstimatorConfig.__dataclass_fields__}, **{f: "bandit" for f in BanditConfig.__dataclass_fields__}}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or name not in fields or name in ("estimator", "bandit", "nodes", "experiments", "hardware", "landscape", "space"):
            raise click.BadParameter(f"{part!r}: a variant is name=value with a field of SimSettings, EstimatorConfig or BanditConfig", param_hint="--variant")
        v = value.strip().lower()
        if v in ("true", "false"):
            out[name] = v == "true"
        else:
            try:
                out[name] = int(v) if v.lstrip("-").isdigit() else float(v)
            except ValueError:
                raise click.BadParameter(f"{part!r}: the value must be a number, inf, true or false", param_hint="--variant") from None
    if not out:
        raise click.BadParameter(f"{text!r}: empty variant", param_hint="--variant")
    return out


def with_variant(settings: SimSettings, variant: dict) -> SimSettings:
    est = {k: v for k, v in variant.items() if k in EstimatorConfig.__dataclass_fields__}
    ban = {k: v for k, v in variant.items() if k in BanditConfig.__dataclass_fields__}
    sim = {k: v for k, v in variant.items() if k in SimSettings.__dataclass_fields__}
    return replace(settings, estimator=replace(settings.estimator, **est), bandit=replace(settings.bandit, **ban), **sim)


def _run(task):
    what, name, seed, experiments, reference_runs, variant = task
    started = time.process_time()
    if what == "bandit_ref":
        out = isolated_bandit_reference(seed, SimSettings(nodes=1, experiments=experiments, landscape=name), reference_runs)
    elif what == "hill_ref":
        out = isolated_reference(seed, SimSettings(nodes=1, experiments=experiments, landscape=name), HILL_REFERENCE_RUNS)
    elif what == "null":
        # no sharing at all: isolated bandits on the scenario's nodes, with random streams the reference never used
        out = run_mode("isolated_bandit", seed, replace(scenario_settings(SCENARIOS[name], seed, experiments), rng_stream=NULL_STREAM))
    else:
        out = run_mode(what, seed, with_variant(scenario_settings(SCENARIOS[name], seed, experiments), dict(variant)))
    return out, time.process_time() - started


def _class_finals(ref: RunResult) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for t in ref.traces:
        out.setdefault(t.hw, []).append(t.final_true)
    return out


def _restricted(ref: RunResult, classes) -> RunResult:
    return RunResult(ref.mode, ref.seed, [t for t in ref.traces if t.hw in classes], ref.optimum)


def judge(scenario: Scenario, seeds, collective: dict[int, RunResult], bandit_ref: dict[int, RunResult], hill_ref: dict[int, RunResult], experiments: int) -> dict:
    """Every figure of one scenario, by the definitions in the module docstring."""
    per_seed_hits, per_seed_hill, per_seed_iso_hill, reps, per_seed_regret, dups = [], [], [], [], [], []
    regrets: dict[str, list[tuple[float, float]]] = {}
    class_hits: dict[str, list[float]] = {}  # per class, each seed's mean over its nodes
    for seed in seeds:
        run, bref, href = collective[seed], bandit_ref[seed], hill_ref[seed]
        classes = {t.hw for t in run.traces}
        hits = experiments_to_reach(run, bref)
        per_seed_hits.append(float(np.mean(hits)))
        for hw in classes:
            class_hits.setdefault(hw, []).append(float(np.mean([h for h, t in zip(hits, run.traces) if t.hw == hw])))
        per_seed_hill.append(float(np.mean(experiments_to_reach(run, href))))
        iso = _restricted(bref, classes)
        per_seed_iso_hill.append(float(np.mean(experiments_to_reach(iso, href))))
        ops = [op for t in run.traces for op in t.operators]
        reps.append(sum(op == "replicate" for op in ops) / len(ops))
        dups.append(same_round_duplicates(run))
        per_seed_regret.append(float(np.mean([t.final_true - run.optimum[t.hw] for t in run.traces])))
        finals = _class_finals(bref)
        for hw in sorted(classes):
            coll = float(np.mean([t.final_true - run.optimum[hw] for t in run.traces if t.hw == hw]))
            alone = float(np.mean(finals[hw]) - bref.optimum[hw])
            regrets.setdefault(hw, []).append((coll, alone))
    n = len(per_seed_hits)
    se = lambda xs: float(np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else math.nan  # noqa: E731
    classes_out = {}
    for hw, pairs in regrets.items():
        coll, alone = np.array(pairs).T
        diff = coll - alone
        classes_out[hw] = {
            "collective_regret": float(coll.mean()),
            "isolated_bandit_regret": float(alone.mean()),
            "paired_difference": float(diff.mean()),
            "paired_difference_se": se(diff),
            "class_ratio": float(coll.mean() / alone.mean()) if alone.mean() > 0 else math.inf,
            "paired_z": float(diff.mean() / se(diff)) if len(diff) > 1 and se(diff) > 0 else math.nan,
            "exps_vs_isolated_bandit": float(np.mean(class_hits[hw])),  # this class's nodes only: which class the headline waits for
            "per_seed": [[float(c), float(a)] for c, a in pairs],  # (collective, alone) regret per seed, for paired comparisons
        }
    out = {
        "nodes": sorted({len(collective[s].traces) for s in seeds}),
        "hardware": scenario.hardware,
        "landscape": scenario.landscape,
        "seeds": n,
        "exps_vs_isolated_bandit": float(np.mean(per_seed_hits)),
        "exps_vs_isolated_bandit_se": se(per_seed_hits),
        "exps_vs_isolated_hillclimb": float(np.mean(per_seed_hill)),
        "isolated_bandit_exps_vs_isolated_hillclimb": float(np.mean(per_seed_iso_hill)),
        "replicate_share": float(np.mean(reps)),
        "duplicate_share": float(np.mean(dups)),
        "classes": classes_out,
        "worst_class_ratio": max(c["class_ratio"] for c in classes_out.values()),
        "worst_class_paired_z": max((c["paired_z"] for c in classes_out.values() if math.isfinite(c["paired_z"])), default=math.nan),
        "per_seed_exps": per_seed_hits,  # each seed's node mean, for paired comparisons
        "per_seed_regret": per_seed_regret,  # each seed's mean final regret over the nodes
    }
    if scenario.landscape == "narrow":
        out["narrow_well"] = narrow_well(seeds, collective, bandit_ref, se)
    return out


def same_round_duplicates(run: RunResult) -> float:
    """The share of a run's experiments that train a candidate another node of the same class
    trains in the same round (all but the first of each such group count)."""
    total = dup = 0
    for k in range(max(len(t.ran) for t in run.traces)):
        seen: set[tuple[str, str]] = set()
        for t in run.traces:
            if k < len(t.ran):
                total += 1
                dup += (t.hw, t.ran[k]) in seen
                seen.add((t.hw, t.ran[k]))
    return dup / total if total else 0.0


def narrow_well(seeds, collective: dict[int, RunResult], bandit_ref: dict[int, RunResult], se) -> dict:
    """Issue 14's finding 3, measured: the share of nodes whose final incumbent sits in the
    narrow optimum's well, for the collective and for the isolated bandits (of the classes the
    collective has), per seed; their paired difference over seeds (negative: sharing found it less)."""
    from p2pgolf.pool.landscapes import make_landscape

    coll, alone = [], []
    for seed in seeds:
        land = make_landscape("narrow", seed)
        run = collective[seed]
        classes = {t.hw for t in run.traces}
        coll.append(float(np.mean([land.in_narrow_well(t.final_config) for t in run.traces])))
        alone.append(float(np.mean([land.in_narrow_well(t.final_config) for t in bandit_ref[seed].traces if t.hw in classes])))
    diff = np.subtract(coll, alone)
    return {"collective_share": float(np.mean(coll)), "isolated_bandit_share": float(np.mean(alone)), "paired_difference": float(diff.mean()), "paired_difference_se": se(list(diff))}


def malicious_by_class(runs) -> dict[str, float]:
    spent: dict[str, list[float]] = {}
    for run in runs:
        for t in run.traces:
            spent.setdefault(t.hw, []).append(sum(t.on_fake) / len(t.on_fake))
    return {hw: float(np.mean(v)) for hw, v in spent.items()}


def paired(default: dict, variant: dict, names: list[str]) -> dict:
    """A variant against the default on the same seeds: per seed, the mean over `names` of the
    variant's minus the default's figure; mean and standard error over seeds."""
    def diff(key):
        per_seed = np.mean([np.subtract(variant[n][key], default[n][key]) for n in names], axis=0)
        return float(per_seed.mean()), (float(per_seed.std(ddof=1) / math.sqrt(len(per_seed))) if len(per_seed) > 1 else math.nan)

    exps, exps_se = diff("per_seed_exps")
    regret, regret_se = diff("per_seed_regret")
    scen = {}
    for n in names:
        e, e_se = paired_one(default[n]["per_seed_exps"], variant[n]["per_seed_exps"])
        r, r_se = paired_one(default[n]["per_seed_regret"], variant[n]["per_seed_regret"])
        scen[n] = {"exps_diff": e, "exps_diff_se": e_se, "regret_diff": r, "regret_diff_se": r_se, "worst_class_ratio": variant[n]["worst_class_ratio"], "default_worst_class_ratio": default[n]["worst_class_ratio"]}
    return {"exps_diff": exps, "exps_diff_se": exps_se, "regret_diff": regret, "regret_diff_se": regret_se, "scenarios": scen}


def paired_one(default, variant) -> tuple[float, float]:
    d = np.subtract(variant, default)
    return float(d.mean()), (float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan)


def headline(per: dict, names: list[str]) -> dict:
    mixed4 = [n for n in names if SCENARIOS[n].hardware == "mixed" and SCENARIOS[n].node_range is None and SCENARIOS[n].nodes == 4]
    same8 = [n for n in names if SCENARIOS[n].hardware != "mixed" and SCENARIOS[n].nodes == 8]
    return {
        "exps_vs_isolated_bandit": float(np.mean([per[n]["exps_vs_isolated_bandit"] for n in mixed4])) if mixed4 else None,
        "exps_vs_isolated_bandit_worst": max((per[n]["exps_vs_isolated_bandit"] for n in mixed4), default=None),
        "exps_vs_isolated_bandit_same_class_8": max((per[n]["exps_vs_isolated_bandit"] for n in same8), default=None),
        "worst_class_ratio": max(per[n]["worst_class_ratio"] for n in names),
        "worst_class_paired_z": max((per[n]["worst_class_paired_z"] for n in names if math.isfinite(per[n]["worst_class_paired_z"])), default=None),
        "replicate_share": float(np.mean([per[n]["replicate_share"] for n in mixed4])) if mixed4 else None,
    }


@click.command()
@click.option("--seeds", default=16, show_default=True, help="seeds per scenario (landscapes and noise)")
@click.option("--first-seed", default=0, show_default=True)
@click.option("--experiments", "-k", default=84, show_default=True, help="experiments per node (K)")
@click.option("--family", "family", default="all", show_default=True, help="'all' or comma-separated scenario names of pool/landscapes.py FAMILY")
@click.option("--malicious", default="base,per_knob_transfer", show_default=True, help="scenarios also run with a malicious node ('' for none)")
@click.option("--reference-runs", default=4, show_default=True, help="isolated bandit nodes per class whose mean final is the isolated bandit's expected result")
@click.option("--null", "null", is_flag=True, help="the noise floor: judge isolated bandits (no sharing at all; other random streams, same landscapes) in place of the collective")
@click.option("--variant", "variants", multiple=True, help="also run the collective with these settings (name=value[,...] over SimSettings, EstimatorConfig, BanditConfig) and compare it with the default, paired over seeds; repeatable")
@click.option("--variant-family", default="", help="the scenarios the variants run on (default: --family)")
@click.option("--jobs", "-j", default=min(2, os.cpu_count() or 1), show_default=True, help="worker processes (runs are independent and seeded)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the tables")
def main(seeds: int, first_seed: int, experiments: int, family: str, malicious: str, reference_runs: int, null: bool, variants: tuple[str, ...], variant_family: str, jobs: int, as_json: bool) -> None:
    names = [s.name for s in FAMILY] if family == "all" else [n.strip() for n in family.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise click.BadParameter(f"unknown scenario {', '.join(unknown) or '(none)'}; known: {', '.join(SCENARIOS)}", param_hint="--family")
    bad = [n for n in (m.strip() for m in malicious.split(",")) if n and (n not in SCENARIOS or SCENARIOS[n].hardware != "mixed")]
    if bad:
        raise click.BadParameter(f"{', '.join(bad)}: a malicious run needs a mixed-hardware scenario of the family", param_hint="--malicious")
    mal_names = [] if null else [m.strip() for m in malicious.split(",") if m.strip()]
    if seeds < 1 or experiments < 2 or reference_runs < 1:
        raise click.BadParameter("need --seeds >= 1, --experiments >= 2 and --reference-runs >= 1")
    parsed = [(label, tuple(sorted(parse_variant(label).items()))) for label in variants]
    if null and parsed:
        raise click.BadParameter("--null judges isolated bandits; it takes no --variant")
    var_names = [n.strip() for n in variant_family.split(",") if n.strip()] or names
    if any(n not in names for n in var_names):
        raise click.BadParameter(f"{variant_family!r}: the variants' scenarios must be among --family's", param_hint="--variant-family")
    seed_range = list(range(first_seed, first_seed + seeds))
    kinds = sorted({SCENARIOS[n].landscape for n in names + mal_names})
    collective_mode = "null" if null else "trust"
    tasks = [(collective_mode, n, s, experiments, reference_runs, ()) for n in names for s in seed_range]
    tasks += [("trust", n, s, experiments, reference_runs, v) for _, v in parsed for n in var_names for s in seed_range]
    tasks += [("malicious", n, s, experiments, reference_runs, ()) for n in mal_names for s in seed_range]
    tasks += [(ref, k, s, experiments, reference_runs, ()) for k in kinds for s in seed_range for ref in ("bandit_ref", "hill_ref")]
    # the biggest runs first, so the pool's workers finish together
    order = sorted(range(len(tasks)), key=lambda i: -(SCENARIOS[tasks[i][1]].nodes_for(tasks[i][2]) if tasks[i][1] in SCENARIOS and tasks[i][0] in ("trust", "malicious") else 3 * reference_runs))
    started = time.time()
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done_sorted = list(pool.map(_run, [tasks[i] for i in order]))
    else:
        done_sorted = [_run(tasks[i]) for i in order]
    done = {order[j]: r for j, r in enumerate(done_sorted)}
    elapsed = time.time() - started
    results: dict[tuple, dict[int, RunResult]] = {}
    cpu: dict[str, list[float]] = {}
    for i, task in enumerate(tasks):
        results.setdefault((task[0], task[1], task[5]), {})[task[2]] = done[i][0]
        cpu.setdefault(f"{task[0]}:{task[1]}" + ("[" + ",".join(f"{k}={v}" for k, v in task[5]) + "]" if task[5] else ""), []).append(done[i][1])

    def judged(mode, variant, scenario_names):
        return {n: judge(SCENARIOS[n], seed_range, results[(mode, n, variant)], results[("bandit_ref", SCENARIOS[n].landscape, ())], results[("hill_ref", SCENARIOS[n].landscape, ())], experiments) for n in scenario_names}

    per = judged(collective_mode, (), names)
    mixed4 = [n for n in names if SCENARIOS[n].hardware == "mixed" and SCENARIOS[n].node_range is None and SCENARIOS[n].nodes == 4]
    same8 = [n for n in names if SCENARIOS[n].hardware != "mixed" and SCENARIOS[n].nodes == 8]
    mal = {n: malicious_by_class(results[("malicious", n, ())].values()) for n in mal_names}
    var_mixed4 = [n for n in var_names if n in mixed4] or var_names
    compared = {}
    for label, v in parsed:
        vper = judged("trust", v, var_names)
        compared[label] = {**headline(vper, var_names), "default": headline(per, var_names), "paired": paired(per, vper, var_mixed4), "paired_scenarios": var_mixed4, "scenarios": vper}
    result = {
        **headline(per, names),
        "null": null,
        "malicious_share_by_class": mal,
        "malicious_share_worst_class": max((v for m in mal.values() for v in m.values()), default=None),
        "scenarios": per,
        "variants": compared,
        "settings": {"seeds": seeds, "first_seed": first_seed, "experiments": experiments, "family": names, "malicious": mal_names, "reference_runs": reference_runs, "hill_reference_runs": HILL_REFERENCE_RUNS, "jobs": jobs, "null": null, "variants": list(variants), "variant_family": var_names},
        "machine": _machine(),
        "seconds": round(elapsed, 1),
        "cpu_seconds_per_run": {k: round(float(np.mean(v)), 2) for k, v in sorted(cpu.items())},
    }
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return
    _tables(result, mixed4, same8)


def _machine() -> str:
    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, numpy {np.__version__}"


def _tables(result, mixed4, same8) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=200)
    s = result["settings"]
    k = s["experiments"]
    table = Table(
        title=("NULL (no sharing: isolated bandits with other random streams)" if s["null"] else "Collective (hardware-adjusted trust)") + f" against our own bandit alone: {s['seeds']} seeds from {s['first_seed']}, K={k}, {s['reference_runs']} isolated bandits and {s['hill_reference_runs']} hill climbers per class as reference",
        caption=f"{result['machine']}; {result['seconds']} s.",
    )
    for col in ("scenario", "nodes", f"exps to isolated bandit@{k} (± se)", "replicate / same-round duplicate share", "class: regret collective / alone, paired diff ± se, ratio", "worst ratio", f"ref: exps to hill climbing@{k}, collective / bandit alone"):
        table.add_column(col, justify="left" if col.startswith(("scenario", "class")) else "right")
    for name, r in result["scenarios"].items():
        cls = "\n".join(
            f"{SHORT.get(hw, hw)}: {c['collective_regret']:.4f} / {c['isolated_bandit_regret']:.4f}, {c['paired_difference']:+.4f} ± {c['paired_difference_se']:.4f} (z {c['paired_z']:+.1f}), {c['class_ratio']:.2f}; exps {c['exps_vs_isolated_bandit']:.1f}"
            for hw, c in r["classes"].items()
        )
        nodes = "-".join(str(x) for x in (r["nodes"][0], r["nodes"][-1])) if len(r["nodes"]) > 1 else str(r["nodes"][0])
        table.add_row(name, nodes, f"{r['exps_vs_isolated_bandit']:.1f} ± {r['exps_vs_isolated_bandit_se']:.1f}", f"{r['replicate_share']:.0%} / {r['duplicate_share']:.0%}", cls, f"{r['worst_class_ratio']:.2f}", f"{r['exps_vs_isolated_hillclimb']:.1f} / {r['isolated_bandit_exps_vs_isolated_hillclimb']:.1f}")
    console.print(table)
    goals = Table(title="Goals (issue 14)")
    for col in ("goal", "value", "met"):
        goals.add_column(col)
    for n in mixed4:
        r = result["scenarios"][n]
        goals.add_row(f"{n}: exps_vs_isolated_bandit <= K/2 = {k / 2:g} (4 mixed nodes)", f"{r['exps_vs_isolated_bandit']:.1f}", "yes" if r["exps_vs_isolated_bandit"] <= k / 2 else "NO")
    for n, r in result["scenarios"].items():
        goals.add_row(f"{n}: worst class ratio < 1", f"{r['worst_class_ratio']:.2f}", "yes" if r["worst_class_ratio"] < 1 else "NO")
        # the same goal judged against its own noise (the module docstring's --null figures): no
        # class's paired regret difference is more than two standard errors above zero
        goals.add_row(f"{n}: worst class paired regret z <= 2 (restated)", f"{r['worst_class_paired_z']:+.1f}", "yes" if r["worst_class_paired_z"] <= 2 else "NO")
    for n in same8:
        r = result["scenarios"][n]
        goals.add_row(f"{n}: exps_vs_isolated_bandit <= K/4 = {k / 4:g} (same-class swarm of 8)", f"{r['exps_vs_isolated_bandit']:.1f}", "yes" if r["exps_vs_isolated_bandit"] <= k / 4 else "NO")
    for n, m in result["malicious_share_by_class"].items():
        for hw, v in m.items():
            goals.add_row(f"{n} + malicious node: share on fakes, {SHORT.get(hw, hw)} <= 5%", f"{v:.1%}", "yes" if v <= 0.05 else "NO")
    console.print(goals)
    for n, r in result["scenarios"].items():
        if "narrow_well" in r:
            w = r["narrow_well"]
            console.print(f"{n}: final incumbents in the narrow well: collective {w['collective_share']:.0%}, isolated bandit {w['isolated_bandit_share']:.0%} (paired {w['paired_difference']:+.0%} ± {w['paired_difference_se']:.0%})")
    if result["variants"]:
        var = Table(title="Variants against the default, paired over the same seeds (variant - default; negative: the variant is better)")
        for col in ("variant", "exps to isolated bandit (default -> variant)", "paired diff ± se", "final regret paired diff ± se", "worst class ratio (default -> variant)", "replicate share", "per scenario: exps diff ± se"):
            var.add_column(col, justify="left" if col.startswith(("variant", "per")) else "right")
        for label, v in result["variants"].items():
            p, d = v["paired"], v["default"]
            scen = "\n".join(f"{n}: {x['exps_diff']:+.1f} ± {x['exps_diff_se']:.1f}" for n, x in p["scenarios"].items())
            var.add_row(label, f"{d['exps_vs_isolated_bandit']:.1f} -> {v['exps_vs_isolated_bandit']:.1f}", f"{p['exps_diff']:+.1f} ± {p['exps_diff_se']:.1f}", f"{p['regret_diff']:+.4f} ± {p['regret_diff_se']:.4f}", f"{d['worst_class_ratio']:.2f} -> {v['worst_class_ratio']:.2f}", f"{d['replicate_share']:.0%} -> {v['replicate_share']:.0%}", scen)
        console.print(var)
    timing = Table(title="CPU seconds per run (one seed)")
    timing.add_column("run")
    timing.add_column("cpu s", justify="right")
    for key, secs in result["cpu_seconds_per_run"].items():
        timing.add_row(key, f"{secs:.1f}")
    console.print(timing)
    console.print("Definitions: see this script's docstring (benchmarks/sim_collective.py).")


if __name__ == "__main__":
    main()

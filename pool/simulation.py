"""A seeded synthetic Parameter Golf landscape and a simulator of nodes searching it.

The landscape is defined over the real knob vocabulary, with the structure real competitors
met: a hardware-dependent schedule defect (warmdown) and batch-size optimum worth a lot on
slow hardware, architecture gains (SwiGLU, mirrored recurrence) that compose when combined,
per-class offsets and scales, and evaluation noise of 0.002-0.01 bpb. Nodes run the real
estimator (pool/estimator.py) and bandit (pool/bandit.py), not copies; the benchmark script
benchmarks/sim_collective.py prints the comparison, tests run a tiny version.

What an isolated node reaches is itself random, so the benchmark compares the collective with
`isolated_reference`: many independent isolated runs per hardware class, whose mean is the
isolated node's expected result on that landscape.

Attackers with free keys (sybils, extreme claims, a liar that attests its own fakes) are in
pool/adversaries.py; an experiment counts as spent on a fake by the truth (no honest node had
measured that candidate yet), not by what the victim believed.

Guarantee: `run_mode(mode, seed, ...)` is deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from p2pgolf.pool import bandit as bandit_mod
from p2pgolf.pool.estimator import EstimatorConfig, Posterior, estimate
from p2pgolf.pool.evidence import DEFAULT_TOKENIZER, AttestationEvidence, Evidence, ResultEvidence
from p2pgolf.pool.proposals import DEFAULT_SPACE, Dim, Proposal, mutate
from p2pgolf.pool.trust_weights import TrustPolicy, static_status
from p2pgolf.protocol import candidates, knobs

MODES = ("isolated_hillclimb", "isolated_bandit", "naive", "trust", "malicious", "malicious_blocked")
BASE = "naive-baseline"
BUDGET_S = 600.0

# Search space of the simulation: the knobs the landscape responds to.
SIM_SPACE: tuple[Dim, ...] = tuple(d for d in DEFAULT_SPACE if d.name in ("activation", "recurrence", "unique_blocks", "mlp_mult", "train_batch_tokens", "warmdown_frac", "matrix_lr", "muon_momentum", "num_layers"))


@dataclass(frozen=True)
class HardwareModel:
    """One class of machine in the landscape."""

    key: str
    offset: float  # level above the fastest class
    scale: float  # how much knob effects are stretched here
    noise_sd: float
    best_batch_log2: float  # step time vs batch: slower machines want smaller batches
    batch_curv: float
    best_warmdown: float  # the schedule defect: slow machines need long warmdown
    warmdown_curv: float


HARDWARE: tuple[HardwareModel, ...] = (
    HardwareModel("cuda:NVIDIA H100 80GB HBM3:x8", 0.0, 1.0, 0.002, 19.0, 0.002, 0.25, 0.02),
    HardwareModel("cuda:NVIDIA GeForce RTX 4090:x1", 0.15, 1.15, 0.004, 17.0, 0.006, 0.4, 0.08),
    HardwareModel("mps:Apple M2 Max:x1", 0.40, 1.3, 0.008, 15.0, 0.012, 0.65, 0.3),
)


@dataclass(frozen=True)
class Landscape:
    """True val_bpb of a config on a hardware class; seeded magnitudes and optima."""

    level: float
    swiglu: float
    leaky: float
    mirror: float
    cycle: float
    compose: float  # extra gain when SwiGLU and mirrored recurrence are combined
    best_lr: float
    lr_curv: float
    best_mlp: float
    hardware: Mapping[str, HardwareModel]

    @classmethod
    def seeded(cls, seed: int, hardware: Sequence[HardwareModel] = HARDWARE) -> "Landscape":
        r = np.random.default_rng([seed, 7])
        return cls(
            level=1.22,
            swiglu=0.012 * r.uniform(0.7, 1.3),
            leaky=0.004 * r.uniform(0.5, 1.5),
            mirror=0.012 * r.uniform(0.7, 1.3),
            cycle=0.003 * r.uniform(0.5, 1.5),
            compose=0.010 * r.uniform(0.7, 1.3),
            best_lr=0.04 * math.exp(r.normal(0.0, 0.3)),
            lr_curv=0.01,
            best_mlp=float(r.uniform(2.5, 3.5)),
            hardware={h.key: h for h in hardware},
        )

    def true_bpb(self, config: Mapping[str, Any], hw: str) -> float:
        h = self.hardware[hw]
        return self.level + h.offset + h.scale * self._common(config) + self._hardware_terms(config, h)

    def _common(self, c: Mapping[str, Any]) -> float:
        act = c["activation"]
        g = -self.swiglu if act == "swiglu" else (-self.leaky if act == "leaky_relu2" else 0.0)
        ub, layers = c["unique_blocks"], c["num_layers"]
        mirrored = False
        if 0 < ub < layers:
            if ub == 1:
                g += 0.02  # one block for everything: too much sharing
            elif ub <= 5:
                mirrored = c["recurrence"] == "mirror"
                g -= self.mirror if mirrored else self.cycle
            else:
                g -= 0.002
        if mirrored and act == "swiglu":
            g -= self.compose
        g += self.lr_curv * math.log(c["matrix_lr"] / self.best_lr) ** 2
        g += 0.004 * (c["mlp_mult"] - self.best_mlp) ** 2
        g += 0.5 * (c["muon_momentum"] - 0.95) ** 2
        g += 0.0006 * (layers - 11) ** 2
        return g

    def _hardware_terms(self, c: Mapping[str, Any], h: HardwareModel) -> float:
        t = h.batch_curv * (math.log2(c["train_batch_tokens"]) - h.best_batch_log2) ** 2
        t += h.warmdown_curv * (c["warmdown_frac"] - h.best_warmdown) ** 2
        return t

    def optimum(self, hw: str) -> float:
        """The lowest true val_bpb reachable on `hw` (terms are separable but for the
        architecture block, which is enumerated)."""
        h = self.hardware[hw]
        best_arch = math.inf
        for act in ("relu2", "leaky_relu2", "swiglu"):
            for rec in ("cycle", "mirror"):
                for layers in range(4, 17):
                    for ub in range(0, min(8, layers) + 1):
                        c = {"activation": act, "recurrence": rec, "unique_blocks": ub, "num_layers": layers, "matrix_lr": self.best_lr, "mlp_mult": self.best_mlp, "muon_momentum": 0.95}
                        best_arch = min(best_arch, self._common(c))
        return self.level + h.offset + h.scale * best_arch  # hardware terms reach zero inside the space


@dataclass(frozen=True)
class SimSettings:
    """Parameters of one simulated run."""

    nodes: int = 4
    experiments: int = 84
    hardware: tuple[str, ...] = tuple(h.key for h in HARDWARE)
    space: tuple[Dim, ...] = SIM_SPACE
    fake_gain: float = 0.03  # how much better than the best known the malicious node claims
    estimator: EstimatorConfig = EstimatorConfig()
    policy: TrustPolicy = TrustPolicy()
    bandit: bandit_mod.BanditConfig = bandit_mod.BanditConfig()
    hillclimb_step: float = 0.15  # the isolated baseline's own step: tuning the bandit must not move the target
    landscape: str = "base"  # a kind of pool/landscapes.py's family; "base" is `Landscape.seeded`
    announce: bool = True  # nodes see which candidates peers of their class started this round
    rng_stream: int = 0  # 0: the nodes' usual random streams; another value: independent ones on the same landscapes


@dataclass
class NodeTrace:
    """What one node did: per experiment, its incumbent's true value and what it ran."""

    hw: str
    incumbent_true: list[float] = field(default_factory=list)  # after each experiment
    ran: list[str] = field(default_factory=list)  # candidate ids
    operators: list[str] = field(default_factory=list)
    on_fake: list[bool] = field(default_factory=list)
    final_incumbent: str | None = None
    final_true: float = math.nan
    lineage_of_final: set[str] = field(default_factory=set)
    final_config: dict = field(default_factory=dict)  # the final incumbent's resolved knobs (where it ended up, not only how well)


@dataclass
class RunResult:
    mode: str
    seed: int
    traces: list[NodeTrace]
    optimum: dict[str, float]


def node_hardware(settings: SimSettings) -> list[str]:
    """Node i runs on class i mod the number of classes (mixed hardware)."""
    return [settings.hardware[i % len(settings.hardware)] for i in range(settings.nodes)]


def isolated_reference(seed: int, settings: SimSettings = SimSettings(), runs: int = 16) -> RunResult:
    """At least `runs` independent isolated hill climbers per hardware class on the seed's
    landscape. What an isolated node reaches is a random outcome; the mean of many runs
    estimates its expected result, which a single run (mode 1 has one per node) does only
    with its luck: matched against one run, a collective node is timed against that run's
    luck as much as against going alone. The first `settings.nodes` traces are mode 1's own
    (same hardware, same random streams), so the reference only adds runs."""
    if runs < 1:
        raise ValueError(f"need at least one reference run per hardware class, not {runs}")
    classes = len(settings.hardware)
    per_class = max(runs, -(-settings.nodes // classes))
    return run_mode("isolated_hillclimb", seed, replace(settings, nodes=classes * per_class))


def isolated_bandit_reference(seed: int, settings: SimSettings = SimSettings(), runs: int = 4) -> RunResult:
    """At least `runs` independent isolated bandit nodes (our own search, alone) per hardware
    class on the seed's landscape; as `isolated_reference`, the first `settings.nodes` traces
    are mode 2's own, so the reference only adds runs. An isolated node sees only its own
    records, so how many nodes run side by side changes nothing but their number."""
    if runs < 1:
        raise ValueError(f"need at least one reference run per hardware class, not {runs}")
    classes = len(settings.hardware)
    per_class = max(runs, -(-settings.nodes // classes))
    return run_mode("isolated_bandit", seed, replace(settings, nodes=classes * per_class))


def run_mode(mode: str, seed: int, settings: SimSettings = SimSettings()) -> RunResult:
    """Simulate `settings.nodes` nodes for `settings.experiments` rounds in one mode."""
    from p2pgolf.pool.landscapes import make_landscape

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    land = make_landscape(settings.landscape, seed)
    hws = node_hardware(settings)
    optimum = {h: land.optimum(h) for h in set(hws)}
    if mode == "isolated_hillclimb":
        traces = [_hillclimb(land, hw, np.random.default_rng([seed, i, 1]), settings) for i, hw in enumerate(hws)]
        return RunResult(mode, seed, traces, optimum)
    return RunResult(mode, seed, _collective(mode, land, hws, seed, settings), optimum)


# ----------------------------------------------------------------------------- modes


class _Ledger:
    """Synthetic records: ids, configs, and the truth behind each candidate."""

    def __init__(self, seed: int, land: Landscape):
        self.seed = seed
        self.land = land
        self.n = 0
        self.results: list[ResultEvidence] = []
        self.attestations: list[AttestationEvidence] = []
        self.configs: dict[str, dict] = {}

    def new_id(self) -> str:
        self.n += 1
        return hashlib.sha256(f"sim/{self.seed}/{self.n}".encode()).hexdigest()

    def config(self, base: str, diff: Mapping[str, Any], candidate: str) -> dict:
        if candidate not in self.configs:
            self.configs[candidate] = knobs.resolve(base, diff)
        return self.configs[candidate]

    def true(self, candidate: str, hw: str) -> float:
        return self.land.true_bpb(self.configs[candidate], hw)


def _author(i: int) -> str:
    return hashlib.sha256(f"sim-node-{i}".encode()).hexdigest()


MALICIOUS = hashlib.sha256(b"sim-node-malicious").hexdigest()


def _hillclimb(land: Landscape, hw: str, rng: np.random.Generator, settings: SimSettings) -> NodeTrace:
    """Keep/revert hill climbing alone: mutate the kept config, keep the child if its one
    measurement beats the kept config's measurement."""
    from p2pgolf.pool.estimator import CandidateInfo

    trace = NodeTrace(hw)
    noise = land.hardware[hw].noise_sd
    kept_diff: dict = {}
    kept_cfg = knobs.resolve(BASE, kept_diff)
    kept_measured = land.true_bpb(kept_cfg, hw) + rng.normal(0.0, noise)
    kept_id = candidates.candidate_id(BASE, kept_diff, DEFAULT_TOKENIZER)
    trace.ran.append(kept_id)
    trace.operators.append("baseline")
    trace.on_fake.append(False)
    trace.incumbent_true.append(land.true_bpb(kept_cfg, hw))
    lineage = [kept_id]
    for _ in range(settings.experiments - 1):
        info = CandidateInfo(kept_id, BASE, kept_diff, (), "", (), (), (), 1.0, 1)
        p = mutate(info, rng, space=settings.space, step=settings.hillclimb_step)
        if p is None:
            continue
        cfg = knobs.resolve(p.base, p.diff)
        measured = land.true_bpb(cfg, hw) + rng.normal(0.0, noise)
        trace.ran.append(p.candidate)
        trace.operators.append("mutate")
        trace.on_fake.append(False)
        if measured < kept_measured:
            kept_diff, kept_cfg, kept_measured, kept_id = dict(p.diff), cfg, measured, p.candidate
            lineage.append(kept_id)
        trace.incumbent_true.append(land.true_bpb(kept_cfg, hw))
    trace.final_incumbent = kept_id
    trace.final_true = land.true_bpb(kept_cfg, hw)
    trace.final_config = dict(kept_cfg)
    trace.lineage_of_final = set(lineage)
    return trace


def _collective(mode: str, land: Landscape, hws: list[str], seed: int, settings: SimSettings, attack=None) -> list[NodeTrace]:
    """The nodes' rounds in one mode. `attack(ledger, k)` (pool/adversaries.py), if given, returns
    the (results, attestations) an attacker gossips after round k; experiments spent on them are
    marked in each trace's `on_fake`."""
    ledger = _Ledger(seed, land)
    authors = [_author(i) for i in range(len(hws))]
    isolated = mode == "isolated_bandit"
    config = settings.estimator
    if mode == "naive":
        config = EstimatorConfig(**{**config.__dict__, "naive": True})
    blocked = (MALICIOUS,) if mode == "malicious_blocked" else ()
    statuses = [static_status(a, pinned=[] if isolated else [b for b in authors if b != a], blocked=blocked) for a in authors]
    rngs = [np.random.default_rng([seed, i, 2] if settings.rng_stream == 0 else [seed, i, 2, settings.rng_stream]) for i in range(len(hws))]
    mal_rng = np.random.default_rng([seed, 99])
    traces = [NodeTrace(hw) for hw in hws]
    histories: list[list[bandit_mod.Outcome]] = [[] for _ in hws]
    fake_records: dict[str, str] = {}  # record id -> candidate
    honest_measured: set[str] = set()  # candidates some honest node measured (results or reproductions)
    candidate_of: dict[str, str] = {}  # record id -> candidate
    malicious = mode in ("malicious", "malicious_blocked")
    posteriors: list[Posterior | None] = [None] * len(hws)

    def visible(i: int) -> Evidence:
        if isolated:
            return Evidence(tuple(r for r in ledger.results if r.author == authors[i]), tuple(a for a in ledger.attestations if a.author == authors[i]))
        return Evidence(tuple(ledger.results), tuple(ledger.attestations))

    for k in range(settings.experiments):
        new_results: list[ResultEvidence] = []
        new_attestations: list[AttestationEvidence] = []
        running: list[tuple[int, str]] = []
        for i, hw in enumerate(hws):
            post = estimate(visible(i), statuses[i], hw, budget_s=BUDGET_S, policy=settings.policy, config=config)
            posteriors[i] = post
            if k > 0:
                traces[i].incumbent_true.append(_incumbent_true(post, ledger, hw, traces[i]))
            # what peers of this class announced this round (nodes start one after another)
            peers_running = [c for j, c in running if j != i and hws[j] == hw] if settings.announce and not isolated else []
            choice = bandit_mod.choose(post, rngs[i], history=histories[i], remaining=settings.experiments - k, space=settings.space, config=settings.bandit, default_base=BASE, running=peers_running)
            p = choice.proposal
            running.append((i, p.candidate))
            cfg = ledger.config(p.base, p.diff, p.candidate)
            measured = land.true_bpb(cfg, hw) + rngs[i].normal(0.0, land.hardware[hw].noise_sd)
            predicted, realised = bandit_mod.predicted_and_realised(choice, measured, post)
            histories[i].append(bandit_mod.Outcome(p.operator, bandit_mod.outcome(p, measured, post), bandit_mod.gain(p, measured, post), predicted=predicted, realised=realised))
            traces[i].ran.append(p.candidate)
            traces[i].operators.append(p.operator)
            traces[i].on_fake.append(_spent_on_fake(p, post, fake_records, honest_measured))
            if p.subject is not None:
                new_attestations.append(AttestationEvidence(ledger.new_id(), p.subject, authors[i], "reproduce", hw, float(measured), k))
            else:
                new_results.append(ResultEvidence(ledger.new_id(), p.candidate, p.base, dict(p.diff), authors[i], hw, float(measured), BUDGET_S, p.parents, k))
        # what the honest nodes measured this round (before any fake joins the lists)
        honest_measured.update(r.candidate for r in new_results)
        honest_measured.update(candidate_of[a.subject] for a in new_attestations if a.subject in candidate_of)
        if malicious:
            fake = _fake(ledger, mal_rng, settings, land)
            if fake is not None:
                fake_records[fake.record_id] = fake.candidate
                new_results.append(fake)
        if attack is not None:
            fakes, fake_attestations = attack(ledger, k)
            for r in fakes:
                fake_records[r.record_id] = r.candidate
            new_results.extend(fakes)
            new_attestations.extend(fake_attestations)
        candidate_of.update((r.record_id, r.candidate) for r in new_results)
        ledger.results.extend(new_results)  # gossip: everyone sees this round's records next round
        ledger.attestations.extend(new_attestations)
    for i, hw in enumerate(hws):
        post = estimate(visible(i), statuses[i], hw, budget_s=BUDGET_S, policy=settings.policy, config=config)
        traces[i].incumbent_true.append(_incumbent_true(post, ledger, hw, traces[i]))
        inc = post.incumbent()
        traces[i].final_incumbent = inc
        traces[i].final_true = traces[i].incumbent_true[-1]
        traces[i].final_config = dict(ledger.configs.get(inc, {})) if inc else {}
        traces[i].lineage_of_final = ({inc} | post.ancestors(inc, limit=10_000)) if inc else set()
    return traces


def _spent_on_fake(p: Proposal, post: Posterior, fake_records: Mapping[str, str], honest_measured: set[str]) -> bool:
    """An experiment is spent on a fake when it re-measures or builds on a fake record, or runs a
    fake record's candidate that the node knew of (from the fakes), while no honest node had
    measured that candidate yet (the simulator knows the truth; a node may have been made to
    believe the fake). A node that never saw the fake (blocked) and proposed the same config on
    its own was not misled."""
    fakes = {c for c in fake_records.values() if c not in honest_measured}
    known = p.candidate in fakes and p.candidate in post.index
    return known or any(fake_records.get(r) in fakes for r in (p.subject, *p.parents) if r is not None)


def _incumbent_true(post: Posterior, ledger: _Ledger, hw: str, trace: NodeTrace) -> float:
    inc = post.incumbent()
    if inc is None:
        return ledger.land.true_bpb(knobs.base_config(BASE), hw)
    return ledger.true(inc, hw)


def _fake(ledger: _Ledger, rng: np.random.Generator, settings: SimSettings, land: Landscape) -> ResultEvidence | None:
    """The malicious node: a mutation of the best honest result, claimed far better than
    anything measured on the fastest class, with a made-up parent."""
    from p2pgolf.pool.estimator import CandidateInfo

    honest = [r for r in ledger.results if r.author != MALICIOUS]
    if not honest:
        return None
    hw = settings.hardware[0]
    on_hw = [r for r in honest if r.hw == hw] or honest
    best = min(on_hw, key=lambda r: r.val_bpb)
    info = CandidateInfo(best.candidate, best.base, best.diff, (best.record_id,), best.record_id, (), (), (), 0.0, 1)
    p = mutate(info, rng, space=settings.space, step=0.3)
    if p is None:
        return None
    ledger.config(p.base, p.diff, p.candidate)
    claim = best.val_bpb - settings.fake_gain * rng.uniform(0.8, 1.5)
    return ResultEvidence(ledger.new_id(), p.candidate, p.base, dict(p.diff), MALICIOUS, hw, float(claim), BUDGET_S, (best.record_id,), 0)


# ----------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class ModeSummary:
    mode: str
    final_true: float  # mean over seeds and nodes of the final incumbent's true bpb
    final_true_sd: float
    regret: float
    regret_sd: float
    winner_share: float
    winner_share_sd: float
    winner_share_strict: float
    malicious_share: float
    malicious_share_sd: float
    curve: list[float]  # mean incumbent true value after each experiment


def summarise(runs: Sequence[RunResult]) -> ModeSummary:
    finals, regrets, shares, strict, mal = [], [], [], [], []
    curves = []
    for run in runs:
        per_seed_mal = []
        for t in run.traces:
            finals.append(t.final_true)
            regrets.append(t.final_true - run.optimum[t.hw])
            n = len(t.ran)
            shares.append(sum(c in t.lineage_of_final for c in t.ran) / n)
            strict.append(sum(c == t.final_incumbent for c in t.ran) / n)
            per_seed_mal.append(sum(t.on_fake) / n)
            curves.append(t.incumbent_true)
        mal.append(float(np.mean(per_seed_mal)))
    length = min(len(c) for c in curves)
    curve = np.mean([c[:length] for c in curves], axis=0).tolist()
    return ModeSummary(
        runs[0].mode,
        float(np.mean(finals)), float(np.std(finals)),
        float(np.mean(regrets)), float(np.std(regrets)),
        float(np.mean(shares)), float(np.std(shares)),
        float(np.mean(strict)),
        float(np.mean(mal)), float(np.std(mal)),
        curve,
    )


TARGET_STATISTICS = {"mean": np.mean, "median": np.median}


def experiments_to_reach(collective: RunResult, reference: RunResult, statistic: str = "mean") -> list[int]:
    """Per node: experiments until its incumbent's true value is at least as good as what the
    reference's nodes on the same hardware reached after all their experiments, summarised
    over them by `statistic` ("mean": the expected result, "median": the typical run);
    len+1 if never."""
    if statistic not in TARGET_STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(TARGET_STATISTICS)}")
    targets: dict[str, list[float]] = {}
    for t in reference.traces:
        targets.setdefault(t.hw, []).append(t.final_true)
    out = []
    for t in collective.traces:
        goal = float(TARGET_STATISTICS[statistic](targets[t.hw]))
        hit = next((k + 1 for k, v in enumerate(t.incumbent_true) if v <= goal), len(t.incumbent_true) + 1)
        out.append(hit)
    return out


def mean_curve_crossing(collective: Sequence[RunResult], reference: Sequence[RunResult]) -> float:
    """Experiments until the average node matches the average isolated node: per hardware
    class, the first k at which the collective's mean incumbent regret (over seeds and nodes of
    that class) is at most the reference's mean final regret; averaged over the nodes
    (len+1 where never)."""
    curves: dict[str, list[np.ndarray]] = {}
    finals: dict[str, list[float]] = {}
    for run in reference:
        for t in run.traces:
            finals.setdefault(t.hw, []).append(t.final_true - run.optimum[t.hw])
    for run in collective:
        for t in run.traces:
            curves.setdefault(t.hw, []).append(np.asarray(t.incumbent_true) - run.optimum[t.hw])
    crossing = {}
    for hw, cs in curves.items():
        length = min(len(c) for c in cs)
        mean = np.mean([c[:length] for c in cs], axis=0)
        target = float(np.mean(finals[hw]))
        crossing[hw] = next((k + 1 for k, v in enumerate(mean) if v <= target), length + 1)
    per_node = [crossing[t.hw] for t in collective[0].traces]
    return float(np.mean(per_node))

"""The estimator: a posterior of every candidate's val_bpb on this node's hardware class.

One Gaussian linear model over the whole pool, solved exactly (no iteration) by a sparse
factorisation of the lineage block and a Schur complement of the few class terms (pool/gmrf.py:
no n x n matrix, so 20,000 candidates fit; beyond a fill budget the marginal sds of a lineage
that cross-links at random are a Monte Carlo estimate, the means stay exact):

    y(record) = mu[candidate] + offset[hw class] + delta[candidate, hw] + noise

- `mu` is the candidate's val_bpb on the target hardware; offsets of other classes are learned
  jointly from candidates measured on several classes (a class with no overlap keeps a wide
  prior, so its results inform rankings but little about absolute level); where a class has
  enough overlaps, a scale (gains shrink or grow across hardware) is fitted too.
- `delta` is the candidate-by-hardware interaction: results from another class carry extra
  variance `interaction_sd**2`, learned per class from the overlaps, so when a class disagrees with this one about the
  ranking, foreign evidence counts for less.
- Per-knob transfer (`knob_transfer_sd` > 0): delta is also given a part that is linear in the
  candidate's knob features (pool/knob_features.py), one coefficient per foreign class and
  feature: a class that disagrees with this one about batch size and schedule is discounted on
  those knobs and believed on the ones that carry (learning rate, momentum, architecture). The
  coefficients are solved jointly with everything else, so a candidate only another class
  measured carries their uncertainty; each feature's prior sd is learned across the foreign
  classes (empirical Bayes), so a class with few overlaps borrows from the others.
  benchmarks/sim_collective.py (8 seeds, whole family, with the simulator's announcements):
  worst class ratio 1.89 -> 1.52, same-class M2 swarm of 8 26.2 -> 22.9 experiments, but 4
  mixed nodes 41.7 -> 44.5 (standard errors 4-9 per scenario): not a demonstrated gain yet;
  off by default (`knob_transfer_sd=0`, the model as it was); 0.05 turns it on.
- Each record's noise variance is the class's run-to-run variance divided by its weight
  (trust, reproduction checks, per-author caps) plus a "could be lying" variance that is zero
  for weight one and grows as weight falls: an untrusted claim moves the estimate a little,
  whatever number it states.
- Lineage is the prior: a candidate starts near the mean of its parents (`lineage_sd`, widened
  by how far trusted children here typically landed from their parents: a robust scale, so a
  few very bad children of one parent do not widen it for everyone);
  candidates without known parents start near the pool's level (`prior_sd`).
- Untrusted evidence (pool/untrusted.py) is judged before the solve: a claim far from what
  trusted evidence, lineage and translation predict is implausible and weighs less the further
  out it is, and the untrusted keys behind one candidate count together as one key. A
  candidate only untrusted evidence backs is worth trying, never believing: it is never
  established here (so never the incumbent), and `ranked` lists it after every candidate that
  trusted evidence backs, whatever value it states.
- Attestations are measurements too (re-evaluations of the subject's class, reproductions on
  the attester's) and are checked against the claim; the verdicts move trust
  (pool/trust_weights.py).
- One measurement counts once: results that share artifact digest and seed (the same run
  re-signed, or signed by several keys) collapse into the most trusted author's record.
- A degraded run (its note says so, or it trained fewer than `degraded_ratio` of the tokens its
  hardware class and model shape usually train in the budget) weighs `degraded_factor` of the rest:
  its score says more about the machine's load than about the config.

Guarantees: `estimate` is a pure function of its inputs (same evidence, same posterior; record
order does not matter); blocked authors' records never enter; every candidate in the result
has a finite mean and a positive sd.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from p2pgolf.pool import gmrf
from p2pgolf.pool.bridge.provenance import importer_of
from p2pgolf.pool.evidence import Evidence, ResultEvidence
from p2pgolf.pool.trust_weights import (
    BLOCKED,
    OWN,
    TRUSTED_WEIGHT,
    UNKNOWN,
    AttestationCheck,
    AuthorTrust,
    StatusFn,
    TrustPolicy,
    author_trust,
    base_weight,
    claim_weight,
    volume_factor,
)
from p2pgolf.pool.untrusted import discount, parents_by_candidate, plausibility
from p2pgolf.protocol import candidates


@dataclass(frozen=True)
class EstimatorConfig:
    """Model constants (bpb). Defaults suit the Parameter Golf scale of differences."""

    noise_sd: float = 0.005  # prior run-to-run sd; refined per class from replicates
    reeval_sd: float = 0.001  # sd of re-evaluating the same artifact
    prior_sd: float = 0.15  # a root candidate around the pool's level
    lineage_sd: float = 0.02  # a child around the mean of its parents
    offset_sd: float = 0.5  # a hardware offset before any overlap
    interaction_sd: float = 0.015  # candidate x hardware, prior; learned per class from overlaps
    scale_sd: float = 0.25  # prior sd of a class's scale around 1
    min_scale_overlaps: int = 5  # fit a scale only with this many overlapping candidates
    lie_sd: float = 0.05  # how far a claim of weight w may be off: lie_sd^2 (1-w)/w
    check_z: float = 3.0  # an attestation disagrees beyond z standard deviations...
    check_slack: float = 0.002  # ...plus this absolute slack
    check_max_tolerance: float = 0.03  # a wider tolerance (unknown translation) is inconclusive
    established_weight: float = 0.5  # trusted weight on this hardware that makes an incumbent
    degraded_ratio: float = 0.5  # a run below this fraction of its class's usual speed is degraded...
    degraded_factor: float = 0.25  # ...and its weight is multiplied by this
    naive: bool = False  # believe every record as if measured on this hardware at full weight
    # Prior sd (bpb per unit feature) of per-knob transfer terms per foreign class; 0: off. Off by
    # default until the family benchmark shows a gain (16 seeds: 40.4 -> 41.5 experiments, worst
    # class ratio 1.73 -> 1.69, every scenario's change within about two standard errors).
    knob_transfer_sd: float = 0.0
    knob_transfer_pseudo: float = 2.0  # pseudo-classes that hold each knob's learned sd near the prior
    plausible_z: float = 4.0  # an untrusted claim this many sds from what trusted evidence predicts is implausible


@dataclass(frozen=True)
class Translation:
    """How another hardware class's results map onto the target class."""

    hw: str
    offset: float
    offset_sd: float
    scale: float
    overlaps: int
    noise_sd: float
    pivot: float = 0.0  # the level around which the scale stretches
    interaction_sd: float = 0.0  # how far this class's ranking departs from the target's

    def to_target(self, y: float) -> float:
        """A value measured on this class, as it would read on the target class."""
        return self.pivot + (y - self.pivot) / self.scale - self.offset

    def from_target(self, y: float) -> float:
        """A target-class value as it would read on this class."""
        return self.pivot + (y + self.offset - self.pivot) * self.scale


@dataclass(frozen=True)
class CandidateInfo:
    """What the pool knows about one candidate besides its estimate."""

    candidate: str
    base: str
    diff: Mapping[str, Any]
    record_ids: tuple[str, ...]
    representative: str  # the record id to cite as a parent (own, else most trusted)
    parents: tuple[str, ...]  # parent candidate ids
    authors: tuple[str, ...]
    hw_classes: tuple[str, ...]
    established: float  # trusted weight of measurements on the target hardware (untrusted evidence adds nothing)
    n_results: int
    support: float = 1.0  # the largest weight any of its evidence carries (0 for none)
    tokenizer: str = "sp1024"

    @property
    def trusted(self) -> bool:
        """True if trusted evidence backs it (own, pinned, or vouched for by a trusted check)."""
        return self.support >= TRUSTED_WEIGHT

    @property
    def is_script(self) -> bool:
        """True if the candidate is a script (base `script:<sha256>`), not a built-in config."""
        return candidates.is_script_base(self.base)


@dataclass(frozen=True)
class Estimate:
    """The posterior of one candidate's val_bpb on the target hardware."""

    candidate: str
    mean: float
    sd: float
    established: float
    n_results: int


@dataclass(frozen=True)
class EvidenceRow:
    """One piece of evidence as it entered the model, for `p2pgolf pool explain`."""

    record_id: str
    kind: str  # result, reeval, reproduce
    author: str
    status: str
    hw: str
    val_bpb: float
    translated: float  # on the target hardware (offset and scale removed)
    trust: float  # author's weight after attestations
    claim: float  # trust raised/cut by checks of this very record
    cap: float  # per-author volume and per-candidate caps
    sd: float  # effective sd of this row in the model (noise, lying, interaction)
    verdicts: tuple[str, ...] = ()


@dataclass
class Posterior:
    """The estimator's output for one target hardware class (read-only by convention)."""

    hw: str
    candidates: list[str]
    mean: np.ndarray
    sd: np.ndarray
    info: dict[str, CandidateInfo]
    translations: dict[str, Translation]
    interaction_sd: float
    authors: dict[str, AuthorTrust]
    checks: list[AttestationCheck]
    lineage_sd: float
    _build_rows: Callable[[], dict[str, list[EvidenceRow]]] = field(repr=False)
    established_weight: float
    _solution: gmrf.GaussianSolution = field(repr=False)
    _rows: dict[str, list[EvidenceRow]] | None = field(default=None, repr=False)
    _ancestors: dict[tuple[str, int], frozenset[str]] = field(default_factory=dict, repr=False)
    _chol: np.ndarray | None = field(default=None, repr=False)
    index: dict[str, int] = field(default_factory=dict)
    noise_sd: float = 0.005  # run-to-run sd on this hardware, as learned from replicates
    knob_transfer: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # class -> (mean, sd) per knob feature
    implausible: dict[str, float] = field(default_factory=dict)  # record id -> z of each implausible untrusted claim

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.candidates)}

    @property
    def rows(self) -> dict[str, list[EvidenceRow]]:
        """The evidence behind each candidate, as it entered the model (for explanations)."""
        if self._rows is None:
            self._rows = self._build_rows()
        return self._rows

    def __contains__(self, candidate: str) -> bool:
        return candidate in self.index

    def estimate(self, candidate: str) -> Estimate:
        """The estimate of one candidate; KeyError if the pool has no evidence of it."""
        i = self.index[candidate]
        inf = self.info[candidate]
        return Estimate(candidate, float(self.mean[i]), float(self.sd[i]), inf.established, inf.n_results)

    def order(self) -> list[str]:
        """Candidate ids, best first: those trusted evidence backs by mean, then the others by
        mean. A stranger's claim may make a candidate worth trying, never worth believing, so
        whatever value it states it never ranks above a candidate with trusted evidence."""
        by_mean = [self.candidates[i] for i in np.argsort(self.mean, kind="stable")]
        return [c for c in by_mean if self.info[c].trusted] + [c for c in by_mean if not self.info[c].trusted]

    def ranked(self) -> list[Estimate]:
        """All candidates in `order`: trusted ones best (lowest mean) first, then the rest."""
        return [self.estimate(c) for c in self.order()]

    def incumbent(self) -> str | None:
        """The best candidate by mean among those established on this hardware by trusted
        measurements; None while nothing is."""
        best, best_mean = None, math.inf
        for c, i in self.index.items():
            if self.info[c].established >= self.established_weight and self.mean[i] < best_mean:
                best, best_mean = c, float(self.mean[i])
        return best

    def sample(self, rng: np.random.Generator, size: int = 1) -> np.ndarray:
        """Joint draws of every candidate's value, shape (size, n_candidates)."""
        n = len(self.candidates)
        if n == 0:
            return np.zeros((size, 0))
        if n > DENSE_DRAW_MAX:
            return self.mean[None, :] + self._solution.draw(rng, size)
        if self._chol is None:
            # small pools draw from the dense covariance's factor, as before: seeded runs keep their choices
            cov = self._solution.candidate_cov() + np.eye(n) * 1e-12
            self._chol = np.linalg.cholesky(cov)
        z = rng.standard_normal((size, n))
        return self.mean[None, :] + z @ self._chol.T

    def ancestors(self, candidate: str, limit: int = 64) -> set[str]:
        """Candidate ids reachable through parents (not including itself)."""
        key = (candidate, limit)
        if key in self._ancestors:
            return set(self._ancestors[key])
        seen: set[str] = set()
        todo = list(self.info[candidate].parents) if candidate in self.info else []
        while todo and len(seen) < limit:
            c = todo.pop()
            if c in seen or c == candidate:
                continue
            seen.add(c)
            if c in self.info:
                todo.extend(self.info[c].parents)
        self._ancestors[key] = frozenset(seen)
        return seen


DENSE_DRAW_MAX = 1_000  # up to this many candidates a joint draw uses the dense covariance's Cholesky factor
_TRUSTED = 0.5  # starting weight from which a key's replicates inform the noise level


def estimate(
    evidence: Evidence,
    status: StatusFn,
    hw: str,
    *,
    budget_s: float | None = None,
    policy: TrustPolicy = TrustPolicy(),
    config: EstimatorConfig = EstimatorConfig(),
) -> Posterior:
    """The posterior of every candidate in `evidence` on hardware class `hw`.

    `status(author)` returns own / pinned / unknown / blocked. With `budget_s`, results
    measured under another budget are left out (they are a different benchmark).
    Imported claims (authors made by `pool.bridge.provenance.imported_author`) count as unknown
    keys, whoever imported them (blocked if the importer is blocked): the importer did not run them."""
    results = [r for r in evidence.results if budget_s is None or _same_budget(r.budget_s, budget_s)]
    statuses: dict[str, str] = {}

    def st(key: str) -> str:
        if key not in statuses:
            importer = importer_of(key)
            if importer is None:
                statuses[key] = status(key)
            else:
                statuses[key] = BLOCKED if status(importer) == BLOCKED else UNKNOWN
        return statuses[key]

    results = [r for r in results if st(r.author) != BLOCKED]
    # one measurement (artifact and seed) is one result, however many keys signed it
    results, alias = _collapse_duplicates(results, st, policy)
    by_id = {r.record_id: r for r in results}
    attestations = [replace(a, subject=alias[a.subject]) if a.subject in alias else a for a in evidence.attestations]
    attestations = [a for a in attestations if st(a.author) != BLOCKED and a.subject in by_id]
    if config.naive:
        statuses = {k: OWN for k in statuses}
        st = lambda key: OWN  # noqa: E731 - naive pooling believes everyone

    # --- observations: results and attestations as measurements of a candidate on a class
    obs = _observations(results, attestations, by_id, hw, config)
    noise = _noise_by_class(obs, st, policy, config)

    # --- pass 1: translation between classes from overlaps (trusted weights, no lineage)
    translations, tau, transfer = _fit_translations(obs, hw, noise, st, policy, config, results)
    interaction_sd = float(np.mean(list(tau.values()))) if tau else config.interaction_sd

    # --- attestation verdicts, then trust moved by them
    checks = _check_attestations(attestations, by_id, translations, noise, hw, tau, config)
    authors = author_trust({r.author for r in results} | {a.author for a in attestations}, st, checks, policy)
    if config.naive:
        authors = {a: AuthorTrust(a, OWN, 1.0, 1.0, 0.0, 0.0) for a in authors}
    checks_by_subject: dict[str, list[AttestationCheck]] = defaultdict(list)
    for check in checks:
        checks_by_subject[check.subject_id].append(check)
    attester_w = lambda key: authors[key].base_weight if key in authors else 0.0  # noqa: E731

    # --- weights of each observation: trust x claim x caps (x a degraded run's factor)
    slowed = {} if config.naive else _degraded_factors(results, config)
    per_author_records: dict[str, int] = defaultdict(int)
    per_author_candidate: dict[tuple[str, str], int] = defaultdict(int)
    for o in obs:
        per_author_records[o.author] += 1
        per_author_candidate[(o.author, o.candidate)] += 1
    weighted: list[tuple[_Obs, float, float, float, float]] = []
    for o in obs:
        trust = authors[o.author].weight
        if config.naive:
            claim = 1.0
        elif o.kind == "result":
            claim = claim_weight(trust, checks_by_subject.get(o.record_id, ()), attester_w)
        else:
            claim = trust
        cap = volume_factor(authors[o.author].status, per_author_records[o.author], policy)
        cap *= min(1.0, policy.per_candidate_cap / per_author_candidate[(o.author, o.candidate)])
        if o.kind == "result":
            cap *= slowed.get(o.record_id, 1.0)
        if claim <= 0.0 or cap <= 0.0:
            continue
        weighted.append((o, trust, claim, cap, claim * cap))

    # --- untrusted evidence: implausible claims discounted, crowds of keys pooled (pool/untrusted.py)
    implausible: dict[str, float] = {}
    if not config.naive:
        parents = parents_by_candidate(results)
        z = plausibility(weighted, parents, hw, noise, translations, _lineage_sd(weighted, parents, hw, noise, config), config)
        weighted, implausible = discount(weighted, z, policy, config.plausible_z)

    post = _solve(weighted, results, hw, noise, translations, tau, interaction_sd, authors, checks, checks_by_subject, st, config, transfer)
    if implausible:
        post.implausible = implausible
        post._build_rows = _marking_implausible(post._build_rows, implausible)
    return post


def _marking_implausible(build_rows, implausible: Mapping[str, float]):
    """`build_rows` with each implausible claim's row saying so (for `pool explain`)."""

    def build() -> dict[str, list[EvidenceRow]]:
        rows = build_rows()
        return {c: [replace(r, verdicts=r.verdicts + (f"implausible (z {implausible[r.record_id]:+.1f})",)) if r.record_id in implausible else r for r in rs] for c, rs in rows.items()}

    return build


# ----------------------------------------------------------------------------- helpers


class _Obs(NamedTuple):  # a tuple: ~100,000 per decision, made far faster than a frozen dataclass
    record_id: str
    kind: str  # result, reeval, reproduce
    candidate: str
    author: str
    hw: str  # the class the value speaks for
    y: float


def _collapse_duplicates(results: list[ResultEvidence], st, policy) -> tuple[list[ResultEvidence], dict[str, str]]:
    """Results that share artifact digest and seed are one measurement (re-signed, or signed by
    several keys): keep one, the most trusted author's (then the earliest, then the smallest
    id), and map the others' ids to it. Results without an artifact are each their own."""
    groups: dict[tuple[str, int], list[ResultEvidence]] = defaultdict(list)
    out: list[ResultEvidence] = []
    for r in results:
        if r.artifact:
            groups[(r.artifact, r.seed)].append(r)
        else:
            out.append(r)
    alias: dict[str, str] = {}
    for group in groups.values():
        if len(group) == 1:  # the common case: one key signed this measurement
            out.append(group[0])
            continue
        keep = min(group, key=lambda r: (-base_weight(st(r.author), policy), r.created_ms, r.record_id))
        out.append(keep)
        for r in group:
            if r is not keep:
                alias[r.record_id] = keep.record_id
    out.sort(key=lambda r: r.record_id)  # order-independent, whatever order the records came in
    return out, alias


def _degraded_factors(results: list[ResultEvidence], config: EstimatorConfig) -> dict[str, float]:
    """`degraded_factor` for each result whose run was degraded: its author said so, or it
    trained fewer than `degraded_ratio` times the tokens that results of the same hardware
    class and model shape usually train in the budget (their median; needs two or more)."""

    speeds: dict[tuple[str, str], list[float]] = defaultdict(list)
    keyed: list[tuple[ResultEvidence, tuple[str, str], float]] = []
    known = _SHAPES
    for r in results:
        tokens, budget = r.train_tokens, r.budget_s
        if tokens <= 0 or budget <= 0:
            continue
        shape = known.get(r.candidate)
        if shape is None:
            shape = _throughput_shape(r.candidate, r.base, r.diff)
        if not shape:
            continue
        key = (r.hw, shape)
        speed = tokens / budget
        speeds[key].append(speed)
        keyed.append((r, key, speed))
    factors = {r.record_id: config.degraded_factor for r in results if r.degraded}
    usual = {key: float(statistics.median(v)) for key, v in speeds.items() if len(v) >= 2}  # once per class and shape
    for r, key, speed in keyed:
        if key in usual and speed < config.degraded_ratio * usual[key]:
            factors[r.record_id] = config.degraded_factor
    return factors


_SHAPES: dict[str, str] = {}


def _throughput_shape(candidate: str, base: str, diff) -> str:
    """knobs.throughput_shape of a candidate's config ("" if its diff no longer resolves);
    memoised by candidate id (the id fixes base and diff), so a decision resolves only new ones."""
    from p2pgolf.protocol import knobs

    shape = _SHAPES.get(candidate)
    if shape is None:
        if len(_SHAPES) > 200_000:
            _SHAPES.clear()
        try:
            shape = knobs.throughput_shape(knobs.resolve(base, diff))
        except Exception:  # a diff that no longer resolves: no speed comparison for it
            shape = ""
        _SHAPES[candidate] = shape
    return shape


def _same_budget(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1.0)


def _observations(results, attestations, by_id, hw, config) -> list[_Obs]:
    out = []
    for r in results:
        out.append(_Obs(r.record_id, "result", r.candidate, r.author, hw if config.naive else r.hw, r.val_bpb))
    for a in attestations:
        subject = by_id[a.subject]
        # a re-evaluation measures the subject's artifact, trained on the subject's hardware
        where = subject.hw if a.method == "reeval" else a.hw
        out.append(_Obs(a.record_id, a.method, subject.candidate, a.author, hw if config.naive else where, a.val_bpb))
    return out


def _noise_by_class(obs, st, policy, config) -> dict[str, float]:
    """Run-to-run sd per class from trusted replicates, shrunk towards the prior."""
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    trusted: dict[str, bool] = {}
    for o in obs:
        if o.kind == "reeval":
            continue
        t = trusted.get(o.author)
        if t is None:
            t = trusted[o.author] = base_weight(st(o.author), policy) >= _TRUSTED
        if t:
            groups[(o.hw, o.candidate)].append(o.y)
    ss: dict[str, float] = defaultdict(float)
    dof: dict[str, int] = defaultdict(int)
    for (h, _), ys in groups.items():
        if len(ys) > 1:  # a few replicates each: plain sums beat an array per group
            m = sum(ys) / len(ys)
            ss[h] += sum((y - m) ** 2 for y in ys)
            dof[h] += len(ys) - 1
    prior_dof = 4.0
    classes = {o.hw for o in obs}
    return {h: math.sqrt((prior_dof * config.noise_sd**2 + ss[h]) / (prior_dof + dof[h])) for h in classes}


def _obs_var(noise_sd: float, weight: float, config: EstimatorConfig) -> float:
    w = min(1.0, weight)
    return noise_sd**2 / w + config.lie_sd**2 * (1.0 - w) / w


def _fit_translations(obs, hw, noise, st, policy, config, results=()):
    """Offsets (and scales) of each class relative to `hw`, from candidates seen on several
    classes, using starting trust only; and the interaction sd from the residuals.
    With `config.knob_transfer_sd`, also per-knob transfer (see `_fit_knob_transfer`): returns
    (translations, tau, transfer) where transfer is None when off."""
    classes = sorted({o.hw for o in obs} - {hw})
    cells: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])  # precision, precision*y
    weights: dict[str, float] = {}
    variances: dict[tuple[str, str, bool], float] = {}
    for o in obs:
        w = weights.get(o.author)
        if w is None:
            w = weights[o.author] = base_weight(st(o.author), policy)
        if w <= 0:
            continue
        key = (o.author, o.hw, o.kind == "reeval")
        v = variances.get(key)
        if v is None:
            v = variances[key] = _obs_var(noise.get(o.hw, config.noise_sd), w, config) if o.kind != "reeval" else config.reeval_sd**2 / w + config.lie_sd**2 * (1 - w) / w
        cell = cells[(o.candidate, o.hw)]
        cell[0] += 1.0 / v
        cell[1] += o.y / v
    seen_on: dict[str, set[str]] = defaultdict(set)
    for c, h in cells:
        seen_on[c].add(h)
    shared = sorted(c for c, hs in seen_on.items() if len(hs) > 1)
    class_mean = _class_means(cells)
    m_target = class_mean.get(hw, float(np.mean(list(class_mean.values()))) if class_mean else 0.0)
    if not classes:
        return {}, {}, None
    overlaps = {h: sum(1 for c in shared if h in seen_on[c] and hw in seen_on[c]) for h in classes}
    table = _CellTable(cells, shared, classes, hw)  # the cells as arrays, for the three fits below
    scale = {h: 1.0 for h in classes}
    tau = {h: config.interaction_sd for h in classes}
    off_mean = {h: class_mean[h] - m_target for h in classes}
    off_sd = {h: config.offset_sd for h in classes}
    if shared:
        for _ in range(3):  # fit, re-estimate interaction and scales, fit again (settles in a few)
            off, off_v, (r_res, v_res, h_res) = _additive_fit(table, tau, scale, off_mean, m_target, config)
            off_mean = {h: off[h] for h in classes}
            off_sd = {h: math.sqrt(off_v[h]) for h in classes}
            tau = {h: _interaction_sd(r_res[h_res == j], v_res[h_res == j], config) for j, h in enumerate(classes)}
            for h in classes:
                if overlaps[h] >= config.min_scale_overlaps:
                    scale[h] = _fit_scale(table, h, tau[h], config)
        # offsets after the loop are from the last fit; restore the original prior centre for
        # classes without overlaps (the additive fit could only move them through chains)
    out = {
        h: Translation(h, float(off_mean[h]), float(off_sd[h]), float(scale[h]), overlaps[h], noise.get(h, config.noise_sd), float(m_target), float(tau[h]))
        for h in classes
    }
    transfer = None
    if config.knob_transfer_sd > 0 and not config.naive:
        phi = _candidate_features(results)
        beta_sd, tau_b = _fit_knob_transfer(cells, shared, classes, hw, tau, scale, off_mean, m_target, phi, config)
        transfer = (phi, beta_sd, tau_b)
    return out, tau, transfer


def _candidate_features(results) -> dict[str, np.ndarray]:
    """Each candidate's knob features, centred on their mean over the pool's candidates: a
    knob nobody varied is then zero everywhere, so it cannot blur the class offsets (which
    stay the level difference at the pool's typical config)."""
    from p2pgolf.pool.knob_features import features

    raw = {r.candidate: features(r.base, r.diff) for r in results}
    if not raw:
        return raw
    centre = np.mean([raw[c] for c in sorted(raw)], axis=0)
    return {c: f - centre for c, f in raw.items()}


def _fit_knob_transfer(cells, shared, classes, hw, tau, scale, off_prior, m_target, phi, config):
    """Per foreign class h and knob feature k, a transfer term beta[h, k]: class h's result on
    candidate c departs from the target's by offset[h] + phi(c) . beta[h] (+ a residual
    interaction). Fitted on the overlaps (candidates measured on both), jointly with the
    candidates and offsets; each feature's prior sd is learned across all foreign classes
    (empirical Bayes, `knob_transfer_pseudo` pseudo-classes at `knob_transfer_sd`), so a class
    with few overlaps borrows what the others showed about which knobs transfer. The residual
    interaction sd per class is re-estimated after the transfer terms. Returns
    (feature sds, tau per class) for the joint solve."""
    from p2pgolf.pool.knob_features import N_FEATURES

    zero = np.zeros(N_FEATURES)
    beta_sd = np.full(N_FEATURES, config.knob_transfer_sd)
    tau_b = dict(tau)
    if not shared:
        return beta_sd, tau_b
    ci = {c: i for i, c in enumerate(shared)}
    hi = {h: len(shared) + j for j, h in enumerate(classes)}
    bi = {h: len(shared) + len(classes) + j * N_FEATURES for j, h in enumerate(classes)}
    n = len(shared) + len(classes) * (1 + N_FEATURES)
    for _ in range(3):
        A = np.zeros((n, n))
        b = np.zeros(n)
        A[np.arange(len(shared)), np.arange(len(shared))] += 1.0
        b[: len(shared)] += m_target
        for h in classes:
            A[hi[h], hi[h]] += 1.0 / config.offset_sd**2
            b[hi[h]] += off_prior[h] / config.offset_sd**2
            sl = slice(bi[h], bi[h] + N_FEATURES)
            A[sl, sl] += np.diag(1.0 / beta_sd**2)
        rows = []
        for (c, h), (p, py) in cells.items():
            if c not in ci:
                continue
            y, v = py / p, 1.0 / p
            if h == hw:
                A[ci[c], ci[c]] += 1.0 / v
                b[ci[c]] += y / v
                continue
            s = scale[h]
            y = m_target + (y - m_target) / s
            v = v / s**2 + tau_b[h] ** 2
            idx = np.concatenate(([ci[c], hi[h]], np.arange(bi[h], bi[h] + N_FEATURES)))
            coef = np.concatenate(([1.0, 1.0], phi.get(c, zero)))
            A[np.ix_(idx, idx)] += np.outer(coef, coef) / v
            b[idx] += coef * y / v
            rows.append((idx, coef, y, v - tau_b[h] ** 2, h))
        cov = np.linalg.inv(A)
        theta = cov @ b
        # each feature's sd, learned over the classes (EM step for the shared variance)
        second = np.zeros(N_FEATURES)
        for h in classes:
            sl = slice(bi[h], bi[h] + N_FEATURES)
            second += theta[sl] ** 2 + np.diag(cov)[sl]
        k0 = config.knob_transfer_pseudo
        beta_sd = np.sqrt((k0 * config.knob_transfer_sd**2 + second) / (k0 + len(classes)))
        resid = [(y - float(coef @ theta[idx]), v, h) for idx, coef, y, v, h in rows]
        tau_b = {h: _interaction_from_residuals([r for r in resid if r[2] == h], config) for h in classes}
    return beta_sd, tau_b


def _class_means(cells) -> dict[str, float]:
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for (_, h), (p, py) in cells.items():
        num[h] += py
        den[h] += p
    return {h: num[h] / den[h] for h in num if den[h] > 0}


class _CellTable:
    """The translation fit's cells (candidate, class) -> (precision, precision * y) as arrays,
    in the cells' order, keeping only candidates in `shared`; and per foreign class the pairs of
    cells (shared candidate on that class and on the target) that a scale is fitted to."""

    def __init__(self, cells, shared, classes, hw) -> None:
        ci = {c: i for i, c in enumerate(shared)}
        hi = {h: j for j, h in enumerate(classes)}
        self.shared, self.classes, self.hw = shared, classes, hw
        keep = [(ci[c], hi.get(h, -1), p, py) for (c, h), (p, py) in cells.items() if c in ci]
        arr = np.asarray(keep, dtype=float).reshape(-1, 4)
        self.cand = arr[:, 0].astype(np.intp)
        self.cls = arr[:, 1].astype(np.intp)  # -1: the target class
        self.p, self.py = arr[:, 2], arr[:, 3]
        target = {c: cell for (c, h), cell in cells.items() if h == hw}
        self.pairs: dict[str, tuple[np.ndarray, ...]] = {}
        for h in classes:
            both = [(target[c][0], target[c][1], cells[(c, h)][0], cells[(c, h)][1]) for c in shared if (c, h) in cells and c in target]
            self.pairs[h] = tuple(np.asarray(both, dtype=float).reshape(-1, 4).T)


def _additive_fit(table, tau, scale, off_prior, m_target, config):
    """Weighted least squares of y = mu_c + off_h on the shared candidates. Returns the offsets,
    their variances, and the residuals of foreign cells as arrays (residual, variance less the
    interaction, class index)."""
    classes = table.classes
    ks, m = len(table.shared), len(classes)
    n = ks + m
    tau_arr = np.asarray([tau[h] for h in classes] + [0.0])
    scale_arr = np.asarray([scale[h] for h in classes] + [1.0])
    foreign = table.cls >= 0
    y = table.py / table.p
    v = 1.0 / table.p
    s = scale_arr[table.cls]
    y = np.where(foreign, m_target + (y - m_target) / s, y)  # put gains on the target's scale
    v = np.where(foreign, v / s**2 + tau_arr[table.cls] ** 2, v)
    prec = 1.0 / v
    c, j = table.cand, ks + table.cls
    cf, jf, pf = c[foreign], j[foreign], prec[foreign]
    rows = np.concatenate([np.arange(n), c, cf, jf, jf])
    cols = np.concatenate([np.arange(n), c, jf, cf, jf])
    vals = np.concatenate([np.ones(ks), np.full(m, 1.0 / config.offset_sd**2), prec, pf, pf, pf])  # flat prior on mu around m_target (sd 1 bpb)
    b = np.zeros(n)
    b[:ks] = m_target
    b[ks:] = np.asarray([off_prior[h] for h in classes]) / config.offset_sd**2
    b += np.bincount(c, weights=y * prec, minlength=n) + np.bincount(jf, weights=y[foreign] * pf, minlength=n)
    # candidates couple only through the class offsets: a diagonal block, eliminated exactly
    solution = gmrf.solve(rows, cols, vals, b, ks)
    theta, var = solution.mean, solution.var
    off = {h: float(theta[ks + i]) for i, h in enumerate(classes)}
    off_v = {h: float(var[ks + i]) for i, h in enumerate(classes)}
    resid = y[foreign] - theta[cf] - theta[jf]
    return off, off_v, (resid, v[foreign] - tau_arr[table.cls[foreign]] ** 2, table.cls[foreign])


def _interaction_sd(r: np.ndarray, v: np.ndarray, config) -> float:
    """`_interaction_from_residuals` of residuals r with variances v (arrays)."""
    return config.interaction_sd if len(r) < 3 else _interaction_from_excess(r * r - v, config)


def _interaction_from_residuals(resid, config) -> float:
    if len(resid) < 3:
        return config.interaction_sd
    return _interaction_from_excess(np.asarray([r * r - v for r, v, _ in resid]), config)


def _interaction_from_excess(excess: np.ndarray, config) -> float:
    # residuals are shrunk by the fit; the factor 2 roughly undoes that for pairs
    est = max(0.0, 2.0 * float(np.mean(excess)))
    k0 = 4.0
    n = len(excess)
    var = (k0 * config.interaction_sd**2 + n * est) / (k0 + n)
    return math.sqrt(var)


def _fit_scale(table, h, tau_h, config) -> float:
    """How much class h stretches differences between candidates, relative to the target.

    Fitted only where the two classes agree on the ranking (weighted correlation >= 0.8):
    where they disagree, a slope would mostly measure the disagreement. The reduced major
    axis slope (ratio of spreads) avoids the dilution an ordinary regression suffers when
    both axes are noisy; it is shrunk towards 1 by its prior."""
    p_t, py_t, p_h, py_h = table.pairs[h]
    x, y, w = py_t / p_t, py_h / p_h, 1.0 / (1.0 / p_t + 1.0 / p_h + tau_h**2)
    xm, ym = np.average(x, weights=w), np.average(y, weights=w)
    sxx = float(np.sum(w * (x - xm) ** 2))
    syy = float(np.sum(w * (y - ym) ** 2))
    sxy = float(np.sum(w * (x - xm) * (y - ym)))
    if sxx <= 0 or syy <= 0 or sxy / math.sqrt(sxx * syy) < 0.8:
        return 1.0
    slope = math.sqrt(syy / sxx)
    prec_data = sxx  # 1/var of the slope, roughly (weights are inverse variances)
    prec_prior = 1.0 / config.scale_sd**2
    s = (slope * prec_data + prec_prior) / (prec_data + prec_prior)
    return float(min(3.0, max(1.0 / 3.0, s)))


def _check_attestations(attestations, by_id, translations, noise, hw, tau, config) -> list[AttestationCheck]:
    out = []
    for a in attestations:
        claim = by_id[a.subject]
        if a.method == "reeval":
            expected = claim.val_bpb
            sd = math.sqrt(2.0) * config.reeval_sd
        else:
            expected = claim.val_bpb
            var = noise.get(claim.hw, config.noise_sd) ** 2 + noise.get(a.hw, config.noise_sd) ** 2
            if claim.hw != a.hw and not config.naive:
                t_claim = translations.get(claim.hw)
                t_att = translations.get(a.hw)
                to_target = t_claim.to_target(claim.val_bpb) if t_claim else claim.val_bpb
                expected = t_att.from_target(to_target) if t_att else to_target
                var += sum(t.offset_sd**2 + t.interaction_sd**2 for t in (t_claim, t_att) if t is not None)
            sd = math.sqrt(var)
        residual = a.val_bpb - expected
        tol = config.check_z * sd + config.check_slack
        out.append(AttestationCheck(a.record_id, a.subject, claim.author, a.author, abs(residual) <= tol, float(residual), float(tol), tol <= config.check_max_tolerance))
    return out


def _lineage_sd(weighted, parents_of, hw, noise, config) -> float:
    """How far children land from their parents here, learned from families that trusted keys
    measured on this hardware: a robust variance of the child-minus-parents gaps (their median
    square over that of a unit normal, 0.455), less the median variance that measurement noise
    explains, shrunk towards `config.lineage_sd`. A fixed width would let the prior overrule
    repeated measurements wherever configs differ by more than it (a tiny model on a laptop
    moves by whole bits per byte). Robust because gaps are heavy-tailed: a proposer's very bad
    children that cite the incumbent as parent would otherwise widen the prior of every child
    (benchmarks/sim_proposers.py: the random proposer's children raised regret this way); up to
    half the families can be outliers without moving it much. Its price: ordinary gaps are
    heavy-tailed too, and in the simulator without a proposer it about halves the prior (20
    seeds: regret +0.0016 +- 0.0012 bpb against the mean of squares, within the spread); a
    trimmed mean of squares (gaps beyond 4 robust sds left out) kept the prior but not the fix
    (random proposer +0.0030 +- 0.0017 against none)."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for o, trust, claim, cap, w in weighted:
        if o.hw == hw and o.kind != "reeval" and trust >= _TRUSTED:
            sums[o.candidate][0] += o.y
            sums[o.candidate][1] += 1.0
    noise_var = noise.get(hw, config.noise_sd) ** 2
    squares, explained = [], []
    for child, parents in sorted(parents_of.items()):
        if not parents or child not in sums or any(p not in sums for p in parents):
            continue
        gap = sums[child][0] / sums[child][1] - sum(sums[p][0] / sums[p][1] for p in parents) / len(parents)
        squares.append(gap * gap)
        explained.append(noise_var * (1.0 / sums[child][1] + sum(1.0 / sums[p][1] for p in parents) / len(parents) ** 2))
    families = len(squares)
    excess = max(0.0, float(np.median(squares)) / 0.4549 - float(np.median(explained))) * families if families else 0.0
    prior_families = 2.0
    return math.sqrt((prior_families * config.lineage_sd**2 + excess) / (prior_families + families))


def _solve(weighted, results, hw, noise, translations, tau, tau_mean, authors, checks, checks_by_subject, st, config, transfer=None) -> Posterior:
    # candidates: everything with evidence, plus known parents of those
    rec_candidate = {r.record_id: r.candidate for r in results}
    info_src: dict[str, list[ResultEvidence]] = defaultdict(list)
    cited: dict[str, set[str]] = defaultdict(set)  # candidate -> record ids its results cite
    for r in results:
        info_src[r.candidate].append(r)
        if r.parents:
            cited[r.candidate].update(r.parents)
    observed = {o.candidate for o, *_ in weighted}
    candidates = sorted(observed)
    ci = {c: i for i, c in enumerate(candidates)}
    parents_of: dict[str, tuple[str, ...]] = {}
    for c in candidates:
        ps = {rec_candidate[p] for p in cited[c] if p in rec_candidate} if c in cited else set()
        ps.discard(c)
        parents_of[c] = tuple(sorted(p for p in ps if p in ci))
    classes = sorted({o.hw for o, *_ in weighted} - {hw})
    k_off = len(candidates)  # the class offsets follow the candidates
    hi = {h: k_off + j for j, h in enumerate(classes)}
    n = len(candidates) + len(classes)
    # per-knob transfer terms of each foreign class (see _fit_knob_transfer), after the offsets
    phi, beta_sd, tau_b = transfer if transfer is not None else ({}, None, {})
    n_feat = len(beta_sd) if beta_sd is not None else 0
    bi = {h: n + j * n_feat for j, h in enumerate(classes)}
    n += len(classes) * n_feat
    tau = {**tau, **tau_b}

    # every observation as arrays, in one pass: candidate, class (-1: the target), kind, value, weights
    cls_of = {h: j for j, h in enumerate(classes)}
    m = len(weighted)
    columns = list(zip(*weighted)) if weighted else [(), (), (), (), ()]
    obs_col = columns[0]
    o_c = np.fromiter(map(ci.__getitem__, [o.candidate for o in obs_col]), np.intp, m)
    o_h = np.fromiter((cls_of.get(h, -1) for h in [o.hw for o in obs_col]), np.intp, m)
    o_re = np.fromiter((o.kind == "reeval" for o in obs_col), bool, m)
    o_y = np.fromiter((o.y for o in obs_col), float, m)
    o_claim, o_cap, o_w = (np.asarray(columns[q], dtype=float).reshape(m) for q in (2, 3, 4))
    on_target = o_h < 0
    # per class (the target last, at index -1): translation, noise and interaction
    tr = [translations.get(h) for h in classes]
    has_t = np.asarray([t is not None for t in tr] + [False])
    pivot = np.asarray([t.pivot if t else 0.0 for t in tr] + [0.0])
    scale = np.asarray([t.scale if t else 1.0 for t in tr] + [1.0])
    offset = np.asarray([t.offset if t else 0.0 for t in tr] + [0.0])
    class_noise = np.asarray([noise.get(h, config.noise_sd) for h in classes] + [noise.get(hw, config.noise_sd)])
    class_tau2 = np.asarray([tau.get(h, config.interaction_sd) ** 2 for h in classes] + [0.0])
    translated = has_t[o_h]

    # pool level on the target hardware: trusted target measurements, else translated others
    ys = np.where(translated, pivot[o_h] + (o_y - pivot[o_h]) / scale[o_h] - offset[o_h], o_y)
    ws = o_w * np.where(on_target, 4.0, 1.0)
    m0 = float(np.average(ys, weights=ws)) if len(ys) else 0.0

    # the normal equations, assembled as (row, col, value) triples and summed in one go
    ai: list[int] = []
    aj: list[int] = []
    av: list[float] = []
    b = np.zeros(n)
    prior_prec = 1.0 / config.prior_sd**2
    lineage_sd = _lineage_sd(weighted, parents_of, hw, noise, config)
    lin_prec = 1.0 / lineage_sd**2
    # lineage prior (a Gaussian Markov random field over the family tree)
    for c in candidates:
        i = ci[c]
        ps = parents_of[c]
        if not ps:
            ai.append(i), aj.append(i), av.append(prior_prec)
            b[i] += m0 * prior_prec
            continue
        idx = [i] + [ci[p] for p in ps]
        coef = [1.0] + [-1.0 / len(ps)] * len(ps)
        for a, ca in zip(idx, coef):
            for bb, cb in zip(idx, coef):
                ai.append(a), aj.append(bb), av.append(lin_prec * ca * cb)
        # a weak anchor keeps cyclic or orphaned families proper
        ai.append(i), aj.append(i), av.append(1e-4 * prior_prec)
        b[i] += 1e-4 * m0 * prior_prec
    for h in classes:
        j = hi[h]
        t = translations.get(h)
        centre = t.offset if t else 0.0
        ai.append(j), aj.append(j), av.append(1.0 / config.offset_sd**2)
        b[j] += centre / config.offset_sd**2

    # observations, aggregated per (candidate, class): they share one interaction term
    nsd = np.where(o_re, config.reeval_sd, class_noise[o_h])
    v = nsd**2 / np.minimum(1.0, o_w) + config.lie_sd**2 * (1.0 - np.minimum(1.0, o_claim)) / np.maximum(o_claim, 1e-12) / np.maximum(o_cap, 1e-12)
    y = np.where(translated, pivot[o_h] + (o_y - pivot[o_h]) / scale[o_h], o_y)  # the offset stays a parameter of the model
    v = np.where(translated, v / scale[o_h] ** 2, v)
    row_sd = np.sqrt(v + class_tau2[o_h])  # per observation, for `explain`
    cell_keys, cell_of = np.unique(o_c * (len(classes) + 1) + (o_h + 1), return_inverse=True)
    cell_c, cell_h = cell_keys // (len(classes) + 1), cell_keys % (len(classes) + 1) - 1
    cell_p = np.bincount(cell_of, weights=1.0 / v, minlength=len(cell_keys))
    cell_py = np.bincount(cell_of, weights=y / v, minlength=len(cell_keys))
    cell_prec = 1.0 / (1.0 / cell_p + class_tau2[cell_h])
    cell_info = cell_prec * cell_py / cell_p
    dense: list[tuple[np.ndarray, np.ndarray, float]] = []  # (indices, coefficients, 1/v) of cells with transfer terms
    plain = np.ones(len(cell_keys), dtype=bool)
    if n_feat:
        for q in np.flatnonzero(cell_h >= 0):
            c, h = candidates[cell_c[q]], classes[cell_h[q]]
            if c in phi:
                plain[q] = False
                idx = np.concatenate(([cell_c[q], hi[h]], np.arange(bi[h], bi[h] + n_feat)))
                coef = np.concatenate(([1.0, 1.0], phi[c]))
                dense.append((idx, coef, float(cell_prec[q])))
                b[idx] += coef * cell_info[q]
    target_cell = plain & (cell_h < 0)
    foreign_cell = plain & (cell_h >= 0)
    ti, fi, fj = cell_c[target_cell], cell_c[foreign_cell], k_off + cell_h[foreign_cell]
    fp = cell_prec[foreign_cell]
    ai.extend(ti.tolist()), aj.extend(ti.tolist()), av.extend(cell_prec[target_cell].tolist())
    ai.extend(np.concatenate([fi, fj, fi, fj]).tolist()), aj.extend(np.concatenate([fi, fj, fj, fi]).tolist()), av.extend(np.tile(fp, 4).tolist())
    b += np.bincount(cell_c[plain], weights=cell_info[plain], minlength=n) + np.bincount(fj, weights=cell_info[foreign_cell], minlength=n)
    for h in classes if n_feat else ():
        sl = np.arange(bi[h], bi[h] + n_feat)
        ai.extend(sl.tolist()), aj.extend(sl.tolist()), av.extend((1.0 / beta_sd**2).tolist())
    for idx, coef, prec in dense:
        ai.extend(np.repeat(idx, len(idx)).tolist()), aj.extend(np.tile(idx, len(idx)).tolist()), av.extend((np.outer(coef, coef) * prec).ravel().tolist())
    # sparse in the candidates (lineage), dense only in the few class and transfer terms
    k = len(candidates)
    solution = gmrf.solve(np.asarray(ai, dtype=np.intp), np.asarray(aj, dtype=np.intp), np.asarray(av, dtype=float), b, k)
    theta, var = solution.mean, solution.var
    mean = theta[:k].copy()
    sd = np.sqrt(np.maximum(var[:k], 1e-12))

    # translations as the joint model sees them
    final_tr: dict[str, Translation] = {}
    for h in classes:
        t = translations.get(h)
        j = hi[h]
        final_tr[h] = Translation(h, float(theta[j]), float(math.sqrt(max(var[j], 0.0))), t.scale if t else 1.0, t.overlaps if t else 0, noise.get(h, config.noise_sd), t.pivot if t else 0.0, t.interaction_sd if t else config.interaction_sd)

    # per-candidate info and explanation rows
    verdicts: dict[str, list[str]] = defaultdict(list)
    for chk in checks:
        word = ("agrees" if chk.agrees else "DISAGREES") if chk.conclusive else "inconclusive"
        verdicts[chk.subject_id].append(f"{chk.attestation_id[:12]} {word} ({chk.residual:+.4f}, tol {chk.tolerance:.4f})")

    def build_rows() -> dict[str, list[EvidenceRow]]:
        # only `explain` reads these; the bandit never pays for building them
        rows: dict[str, list[EvidenceRow]] = defaultdict(list)
        for q, (o, trust, claim, cap, w) in enumerate(weighted):
            t = final_tr.get(o.hw)
            translated = o.y if t is None else t.to_target(o.y)
            status = authors[o.author].status if o.author in authors else st(o.author)
            rows[o.candidate].append(EvidenceRow(o.record_id, o.kind, o.author, status, o.hw, o.y, float(translated), trust, claim, cap, float(row_sd[q]), tuple(verdicts.get(o.record_id, ()))))
        return dict(rows)

    held = np.minimum(1.0, o_claim)
    support = np.zeros(k)
    np.maximum.at(support, o_c, held)
    here = on_target & ~o_re & (o_claim >= TRUSTED_WEIGHT)  # untrusted evidence never establishes
    established = np.bincount(o_c[here], weights=held[here], minlength=k)
    info: dict[str, CandidateInfo] = {}
    rank = {a: (t.status != OWN, -t.weight) for a, t in authors.items()}
    for i, c in enumerate(candidates):
        src = info_src.get(c, [])
        first = src[0] if src else None
        rep = _representative(src, rank)
        info[c] = CandidateInfo(
            candidate=c,
            base=first.base if first else "",
            diff=dict(first.diff) if first else {},
            record_ids=tuple(sorted(r.record_id for r in src)),
            representative=rep,
            parents=parents_of[c],
            authors=tuple(sorted({r.author for r in src})),
            hw_classes=tuple(sorted({r.hw for r in src})),
            established=float(established[i]),
            n_results=len(src),
            support=float(support[i]),
            tokenizer=first.tokenizer if first else "sp1024",
        )
    return Posterior(
        hw=hw,
        candidates=candidates,
        mean=mean,
        sd=sd,
        info=info,
        translations=final_tr,
        interaction_sd=tau_mean,
        authors=authors,
        checks=checks,
        lineage_sd=lineage_sd,
        _build_rows=build_rows,
        established_weight=config.established_weight,
        _solution=solution,
        noise_sd=float(noise.get(hw, config.noise_sd)),
        knob_transfer={h: (theta[bi[h] : bi[h] + n_feat].copy(), np.sqrt(np.maximum(var[bi[h] : bi[h] + n_feat], 0.0))) for h in classes} if n_feat else {},
    )


def _representative(src: list[ResultEvidence], rank: Mapping[str, tuple[bool, float]]) -> str:
    """The record to cite: own first, then the most trusted author's, the earliest, the smallest
    id. `rank[author]` is (not own, -weight)."""
    if not src:
        return ""
    unknown = (True, -0.0)
    return min(src, key=lambda r: (*rank.get(r.author, unknown), r.created_ms, r.record_id)).record_id

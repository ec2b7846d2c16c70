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
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from p2pgolf.pool import gmrf
from p2pgolf.pool.gc_pause import gc_paused
from p2pgolf.pool.bridge.provenance import importer_of
from p2pgolf.pool.evidence import Evidence
from p2pgolf.pool.evidence_columns import KINDS, EvidenceColumns, columns_of
from p2pgolf.pool.trust_weights import (
    BLOCKED,
    OWN,
    TRUSTED_STATUSES,
    TRUSTED_WEIGHT,
    UNKNOWN,
    AttestationCheck,
    AuthorTrust,
    StatusFn,
    TrustPolicy,
    author_trust,
    base_weight,
    claim_weight,
    volume_factors,
)
from p2pgolf.pool.untrusted import discount_columns, plausibility
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
    # class ratio 1.73 -> 1.69, every scenario's change within about two standard errors). Alone
    # against the default on tuning seeds 100-107 (six 4-node mixed scenarios, paired): +1.5 +- 1.8
    # experiments, final regret +0.0009 +- 0.0007 bpb; it helps two nodes (50.7 -> 32.6) only.
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

    @cached_property  # the bandit asks this of every candidate, several times per decision
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
    _flags: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (trusted, established weight) per candidate

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.candidates)}

    def _candidate_flags(self) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate (in `candidates` order): trusted evidence backs it, and its established
        weight; read from `info` once (the bandit orders and asks for the incumbent repeatedly)."""
        if self._flags is None:
            infos = [self.info[c] for c in self.candidates]
            n = len(infos)
            self._flags = (np.fromiter((inf.trusted for inf in infos), bool, n), np.fromiter((inf.established for inf in infos), float, n))
        return self._flags

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
        by_mean = np.argsort(self.mean, kind="stable")
        trusted = self._candidate_flags()[0][by_mean]
        names = self.candidates
        return [names[i] for i in by_mean[trusted].tolist()] + [names[i] for i in by_mean[~trusted].tolist()]

    def ranked(self) -> list[Estimate]:
        """All candidates in `order`: trusted ones best (lowest mean) first, then the rest."""
        return [self.estimate(c) for c in self.order()]

    def incumbent(self) -> str | None:
        """The best candidate by mean among those established on this hardware by trusted
        measurements; None while nothing is."""
        established = np.flatnonzero(self._candidate_flags()[1] >= self.established_weight)
        if not len(established):
            return None
        return self.candidates[int(established[np.argmin(self.mean[established])])]  # the first of equal means, as a scan would

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
    keys, whoever imported them (blocked if the importer is blocked): the importer did not run them.

    Every step works on columns (pool/evidence_columns.py: one array per field over all
    records), so a decision over 100,000 records costs array operations, not Python loops."""
    with gc_paused():
        return _estimate(evidence, status, hw, budget_s, policy, config)



def _estimate(evidence: Evidence, status: StatusFn, hw: str, budget_s: float | None, policy: TrustPolicy, config: EstimatorConfig) -> Posterior:
    cols = columns_of(evidence)
    names = list(cols.classes)  # class code -> key; the target is appended if nothing was measured on it
    t = cols.code_of_class(hw)
    if t < 0:
        names.append(hw)
        t = len(names) - 1
    statuses: dict[str, str] = {}

    def st(key: str) -> str:
        if key not in statuses:
            importer = importer_of(key)
            if importer is None:
                statuses[key] = status(key)
            else:
                statuses[key] = BLOCKED if status(importer) == BLOCKED else UNKNOWN
        return statuses[key]

    author_status = [st(a) for a in cols.authors]
    blocked = np.fromiter((s == BLOCKED for s in author_status), bool, len(author_status))
    keep = ~blocked[cols.r_author]
    if budget_s is not None:
        keep &= np.abs(cols.r_budget - budget_s) <= 1e-6 * np.maximum(np.maximum(np.abs(cols.r_budget), abs(budget_s)), 1.0)
    # one measurement (artifact and seed) is one result, however many keys signed it
    start_w = np.asarray([base_weight(s, policy) for s in author_status], dtype=float)
    res, alias = _collapse_duplicates(cols, np.flatnonzero(keep), start_w)
    att = _attestations(cols, res, alias, blocked)
    if config.naive:
        st = lambda key: OWN  # noqa: E731 - naive pooling believes everyone
        author_status = [OWN] * len(author_status)
        start_w = np.ones(len(author_status))

    # --- observations: results and attestations as measurements of a candidate on a class
    o = _observations(cols, res, att, t, config)
    noise, noise_arr = _noise_by_class(o, start_w >= _TRUSTED, names, config)

    # --- pass 1: translation between classes from overlaps (trusted weights, no lineage)
    translations, tau, transfer = _fit_translations(o, t, names, noise_arr, start_w, config, cols.candidates, lambda: [evidence.results[i] for i in res.src])
    interaction_sd = float(np.mean(list(tau.values()))) if tau else config.interaction_sd

    # --- attestation verdicts, then trust moved by them
    checks = _check_attestations(att, res, cols, names, translations, noise_arr, config)
    authors = author_trust({cols.authors[a] for a in np.unique(res.author).tolist()} | {cols.authors[a] for a in np.unique(att.author).tolist()}, st, checks, policy)
    if config.naive:
        authors = {a: AuthorTrust(a, OWN, 1.0, 1.0, 0.0, 0.0) for a in authors}

    # --- weights of each observation: trust x claim x caps (x a degraded run's factor)
    trust_of = np.asarray([authors[a].weight if a in authors else 0.0 for a in cols.authors], dtype=float)
    trust = trust_of[o.author]
    claim = np.ones(len(o)) if config.naive else trust.copy()
    if not config.naive:
        attester_w = lambda key: authors[key].base_weight if key in authors else 0.0  # noqa: E731
        checks_by_subject: dict[int, list[AttestationCheck]] = defaultdict(list)
        for j, check in zip(att.subject.tolist(), checks):
            checks_by_subject[j].append(check)
        for j, subject_checks in checks_by_subject.items():  # a result's observation sits at its position among the results
            claim[j] = claim_weight(float(trust[j]), subject_checks, attester_w)
    n_records = np.bincount(o.author, minlength=len(cols.authors))
    trusted_status = np.asarray([authors[a].status in TRUSTED_STATUSES if a in authors else False for a in cols.authors], dtype=bool)
    volume = volume_factors(trusted_status, n_records, policy)
    _, pair, pair_n = np.unique(o.author * max(1, len(cols.candidates)) + o.cand, return_inverse=True, return_counts=True)
    cap = volume[o.author] * np.minimum(1.0, policy.per_candidate_cap / pair_n[pair.reshape(-1)])
    if not config.naive:
        cap[: len(res)] *= _degraded_factors(res, cols, evidence.results, config)
    kept = (claim > 0.0) & (cap > 0.0)
    o = o.take(kept)
    trust, claim, cap = trust[kept], claim[kept], cap[kept]

    # --- untrusted evidence: implausible claims discounted, crowds of keys pooled (pool/untrusted.py)
    parents = _parents(res, cols)
    implausible: dict[str, float] = {}
    if not config.naive:
        lineage_sd = _lineage_sd(o, trust, t, sorted(parents.items()), noise, hw, config)
        z = plausibility(claim, o.cand, o.hw, o.y, o.kind == _REEVAL, t, _class_arrays(names, translations, noise_arr), parents, lineage_sd, config)
        claim, cap, hit = discount_columns(claim, cap, o.cand, o.author, z, policy, config.plausible_z)
        implausible = {o.record_id(q): float(z[q]) for q in np.flatnonzero(hit).tolist()}

    post = _solve(o, trust, claim, cap, res, parents, t, names, noise, noise_arr, translations, tau, interaction_sd, authors, checks, st, cols, evidence.results, config, transfer)
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

_RESULT, _REEVAL, _REPRODUCE = 0, 1, 2  # observation kinds (pool/evidence_columns.KINDS)


@dataclass(frozen=True)
class _Results:
    """The results that enter the model, in record id order (an order-independent one), as
    columns; `src` is each one's position in the evidence."""

    src: np.ndarray
    cand: np.ndarray
    author: np.ndarray
    hw: np.ndarray
    y: np.ndarray
    created: np.ndarray
    at: np.ndarray  # per evidence position: its position here, -1 if left out

    def __len__(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class _Attestations:
    """The attestations that enter the model, in evidence order: each with its subject's
    position among the results (after duplicates collapsed)."""

    rid: list[str]
    pos: np.ndarray  # positions among the evidence's attestations
    subject: np.ndarray
    author: np.ndarray
    hw: np.ndarray
    reeval: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class _Obs:
    """Every observation as columns: the results (in `_Results` order), then the attestations."""

    ids: list[str]  # record ids of the evidence's results, then of its attestations
    ref: np.ndarray  # each observation's record, as a position in `ids`
    kind: np.ndarray  # _RESULT, _REEVAL, _REPRODUCE
    cand: np.ndarray  # candidate code
    author: np.ndarray  # author code
    hw: np.ndarray  # code of the class the value speaks for
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.ref)

    def record_id(self, q: int) -> str:
        return self.ids[self.ref[q]]

    def take(self, mask: np.ndarray) -> "_Obs":
        idx = np.flatnonzero(mask)
        if len(idx) == len(self.ref):
            return self
        return _Obs(self.ids, self.ref[idx], self.kind[idx], self.cand[idx], self.author[idx], self.hw[idx], self.y[idx])


def _collapse_duplicates(cols: EvidenceColumns, kept: np.ndarray, start_w: np.ndarray) -> tuple[_Results, np.ndarray]:
    """Results that share artifact digest and seed are one measurement (re-signed, or signed by
    several keys): keep one, the most trusted author's (then the earliest, then the smallest
    id). Results without an artifact are each their own. Returns the results kept, in record id
    order, and per evidence position the position of the result that stands for it."""
    n = len(cols.r_id)
    alias = np.arange(n, dtype=np.intp)
    measure = cols.r_measure[kept]
    timed = kept[measure >= 0]
    _, group, counts = np.unique(cols.r_measure[timed], return_inverse=True, return_counts=True)
    shared = timed[counts[group.reshape(-1)] > 1]  # the rare measurements signed more than once
    dropped = np.zeros(n, dtype=bool)
    if len(shared):
        rid, author, created = cols.r_id, cols.r_author, cols.r_created
        groups: dict[int, list[int]] = {}
        for i in shared.tolist():
            groups.setdefault(int(cols.r_measure[i]), []).append(i)
        for members in groups.values():
            keep = min(members, key=lambda i: (-start_w[author[i]], int(created[i]), rid[i]))
            for i in members:
                if i != keep:
                    alias[i] = keep
                    dropped[i] = True
    # in record id order (order-independent, whatever order the records came in): the columns'
    # id order, kept once with them, less the results left out
    by_id = cols.memo.get("id order", {}).get(n)
    if by_id is None:
        by_id = np.argsort(cols.r_rank, kind="stable")
        cols.memo["id order"] = {n: by_id}  # this generation's only (an extension's copy replaces it)
    chosen = np.zeros(n, dtype=bool)
    chosen[kept] = True
    chosen[dropped] = False
    src = by_id[chosen[by_id]]
    at = np.full(n, -1, dtype=np.intp)
    at[src] = np.arange(len(src))
    res = _Results(src, cols.r_cand[src], cols.r_author[src], cols.r_hw[src], cols.r_y[src], cols.r_created[src], at)
    return res, alias


def _attestations(cols: EvidenceColumns, res: _Results, alias: np.ndarray, blocked: np.ndarray) -> _Attestations:
    """The attestations whose author is not blocked and whose subject (or the result that
    stands for it) is a result here."""
    subject = np.full(len(cols.a_id), -1, dtype=np.intp)
    known = cols.a_subject >= 0
    subject[known] = res.at[alias[cols.a_subject[known]]]
    keep = np.flatnonzero((subject >= 0) & ~blocked[cols.a_author])
    return _Attestations([cols.a_id[q] for q in keep.tolist()], keep, subject[keep], cols.a_author[keep], cols.a_hw[keep], cols.a_reeval[keep], cols.a_y[keep])


def _observations(cols: EvidenceColumns, res: _Results, att: _Attestations, t: int, config) -> _Obs:
    # a re-evaluation measures the subject's artifact, trained on the subject's hardware
    kind = np.concatenate([np.full(len(res), _RESULT), np.where(att.reeval, _REEVAL, _REPRODUCE)]).astype(np.intp)
    hw = np.concatenate([res.hw, np.where(att.reeval, res.hw[att.subject], att.hw)]).astype(np.intp)
    if config.naive:
        hw[:] = t
    ref = np.concatenate([res.src, len(cols.r_id) + att.pos]).astype(np.intp)
    return _Obs(cols.r_id + cols.a_id, ref, kind, np.concatenate([res.cand, res.cand[att.subject]]).astype(np.intp), np.concatenate([res.author, att.author]).astype(np.intp), hw, np.concatenate([res.y, att.y]))


def _noise_by_class(o: _Obs, trusted_author: np.ndarray, names: list[str], config) -> tuple[dict[str, float], np.ndarray]:
    """Run-to-run sd per class from trusted replicates, shrunk towards the prior: as a dict over
    the classes observed, and as an array over every class code (the prior where none)."""
    sel = (o.kind != _REEVAL) & trusted_author[o.author]
    H = len(names)
    ss = np.zeros(H)
    dof = np.zeros(H)
    if sel.any():
        _, group, counts = np.unique(o.cand[sel] * H + o.hw[sel], return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        y = o.y[sel]
        mean = np.bincount(group, weights=y) / counts
        dev = np.bincount(group, weights=(y - mean[group]) ** 2)
        first = np.zeros(len(counts), dtype=np.intp)
        first[group[::-1]] = np.flatnonzero(sel)[::-1]
        many = counts > 1  # a few replicates each
        gh = o.hw[first]
        ss = np.bincount(gh[many], weights=dev[many], minlength=H)
        dof = np.bincount(gh[many], weights=(counts - 1)[many], minlength=H)
    prior_dof = 4.0
    arr = np.full(H, config.noise_sd)
    present = np.unique(o.hw).tolist()
    noise = {}
    for h in present:
        noise[names[h]] = arr[h] = math.sqrt((prior_dof * config.noise_sd**2 + float(ss[h])) / (prior_dof + float(dof[h])))
    return noise, arr


def _obs_var(noise_sd, weight, config):
    w = np.minimum(1.0, weight)
    return noise_sd**2 / w + config.lie_sd**2 * (1.0 - w) / w


def _fit_translations(o: _Obs, t: int, names: list[str], noise_arr: np.ndarray, start_w: np.ndarray, config, cand_names: list[str], results=lambda: ()):
    """Offsets (and scales) of each class relative to the target `t`, from candidates seen on
    several classes, using starting trust only; and the interaction sd from the residuals.
    With `config.knob_transfer_sd`, also per-knob transfer (see `_fit_knob_transfer`): returns
    (translations, tau, transfer) where transfer is None when off."""
    hw = names[t]
    H = len(names)
    present = np.unique(o.hw).tolist()
    class_codes = [h for h in present if h != t]  # codes follow the keys' sorted order
    classes = [names[h] for h in class_codes]
    w = start_w[o.author]
    sel = w > 0
    w = w[sel]
    v = _obs_var(np.where(o.kind[sel] == _REEVAL, config.reeval_sd, noise_arr[o.hw[sel]]), w, config)
    keys, first, inv = np.unique(o.cand[sel] * H + o.hw[sel], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # cells in order of first appearance
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order))
    cell = rank[inv.reshape(-1)]
    cp = np.bincount(cell, weights=1.0 / v, minlength=len(order))  # precision
    cpy = np.bincount(cell, weights=o.y[sel] / v, minlength=len(order))  # precision * y
    cc, ch = (keys // H)[order], (keys % H)[order]
    n_cls = np.bincount(cc, minlength=1)
    shared_mask = n_cls > 1
    den = np.bincount(ch, weights=cp, minlength=H)
    num = np.bincount(ch, weights=cpy, minlength=H)
    seen_cls = ch[np.sort(np.unique(ch, return_index=True)[1])] if len(ch) else ch
    class_mean = {int(h): num[h] / den[h] for h in seen_cls.tolist() if den[h] > 0}
    m_target = float(class_mean[t]) if t in class_mean else (float(np.mean(list(class_mean.values()))) if class_mean else 0.0)
    if not classes:
        return {}, {}, None
    on_t = np.zeros(len(n_cls), dtype=bool)
    on_t[cc[ch == t]] = True
    overlaps = {names[h]: int(np.count_nonzero(shared_mask[cc] & on_t[cc] & (ch == h))) for h in class_codes}
    table = _CellTable(cc, ch, cp, cpy, shared_mask, on_t, class_codes, classes, t)
    scale = {h: 1.0 for h in classes}
    tau = {h: config.interaction_sd for h in classes}
    off_mean = {h: float(class_mean[c]) - m_target for h, c in zip(classes, class_codes)}
    off_sd = {h: config.offset_sd for h in classes}
    if table.shared:
        for _ in range(3):  # fit, re-estimate interaction and scales, fit again (settles in a few)
            off, off_v, (r_res, v_res, h_res) = _additive_fit(table, tau, scale, off_mean, m_target, config)
            off_mean = {h: off[h] for h in classes}
            off_sd = {h: math.sqrt(off_v[h]) for h in classes}
            tau = {h: _interaction_sd(r_res[h_res == j], v_res[h_res == j], config) for j, h in enumerate(classes)}
            for h in classes:
                if overlaps[h] >= config.min_scale_overlaps:
                    scale[h] = _fit_scale(table, h, tau[h], config)
    out = {
        h: Translation(h, float(off_mean[h]), float(off_sd[h]), float(scale[h]), overlaps[h], float(noise_arr[c]), float(m_target), float(tau[h]))
        for h, c in zip(classes, class_codes)
    }
    transfer = None
    if config.knob_transfer_sd > 0 and not config.naive:
        phi = _candidate_features(results())
        cells = {(cand_names[c], names[h]): [p, py] for c, h, p, py in zip(cc.tolist(), ch.tolist(), cp.tolist(), cpy.tolist())}
        shared = [cand_names[c] for c in np.flatnonzero(shared_mask).tolist()]  # codes follow the ids' sorted order
        beta_sd, tau_b = _fit_knob_transfer(cells, shared, classes, hw, tau, scale, off_mean, m_target, phi, config)
        transfer = (phi, beta_sd, tau_b)
    return out, tau, transfer


class _CellTable:
    """The translation fit's cells (candidate, class) -> (precision, precision * y) as arrays,
    in the cells' order, keeping only shared candidates (seen on two classes or more); and per
    foreign class the pairs of cells (shared candidate on that class and on the target) that a
    scale is fitted to, by candidate."""

    def __init__(self, cc, ch, cp, cpy, shared_mask, on_t, class_codes, class_names, t) -> None:
        shared_codes = np.flatnonzero(shared_mask)
        self.shared = shared_codes.tolist()
        self.classes = class_names
        local = np.full(len(shared_mask), -1, dtype=np.intp)
        local[shared_codes] = np.arange(len(shared_codes))
        cls_index = np.full(int(max(class_codes + [t])) + 1, -1, dtype=np.intp)
        cls_index[class_codes] = np.arange(len(class_codes))
        keep = shared_mask[cc]
        self.cand = local[cc[keep]]
        self.cls = cls_index[ch[keep]]  # -1: the target class
        self.p, self.py = cp[keep], cpy[keep]
        target_cell = np.full(len(shared_mask), -1, dtype=np.intp)
        on_target = np.flatnonzero(ch == t)
        target_cell[cc[on_target]] = on_target
        self.pairs: dict[str, tuple[np.ndarray, ...]] = {}
        for h, name in zip(class_codes, class_names):
            q = np.flatnonzero((ch == h) & keep & on_t[cc])
            q = q[np.argsort(cc[q], kind="stable")]
            tq = target_cell[cc[q]]
            self.pairs[name] = (cp[tq], cpy[tq], cp[q], cpy[q])


@dataclass(frozen=True)
class _ClassArrays:
    """Per class code: its translation onto the target (identity where none) and noise."""

    has: np.ndarray  # a translation exists (never for the target)
    pivot: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    offset_sd: np.ndarray
    interaction_sd: np.ndarray
    noise: np.ndarray

    def to_target(self, y: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Translation.to_target of values y measured on classes h (unchanged where no translation)."""
        p = self.pivot[h]
        return np.where(self.has[h], p + (y - p) / self.scale[h] - self.offset[h], y)

    def from_target(self, y: np.ndarray, h: np.ndarray) -> np.ndarray:
        """Translation.from_target of target values y onto classes h (unchanged where none)."""
        p = self.pivot[h]
        return np.where(self.has[h], p + (y + self.offset[h] - p) * self.scale[h], y)


def _class_arrays(names: list[str], translations: Mapping[str, Translation], noise_arr: np.ndarray) -> _ClassArrays:
    tr = [translations.get(h) for h in names]
    return _ClassArrays(
        np.asarray([x is not None for x in tr], dtype=bool),
        np.asarray([x.pivot if x else 0.0 for x in tr], dtype=float),
        np.asarray([x.scale if x else 1.0 for x in tr], dtype=float),
        np.asarray([x.offset if x else 0.0 for x in tr], dtype=float),
        np.asarray([x.offset_sd if x else 0.0 for x in tr], dtype=float),
        np.asarray([x.interaction_sd if x else 0.0 for x in tr], dtype=float),
        noise_arr,
    )


def _check_attestations(att: _Attestations, res: _Results, cols: EvidenceColumns, names: list[str], translations, noise_arr, config) -> list[AttestationCheck]:
    """The verdict on each attestation: its value against the claim's, translated between the
    two classes where they differ (a re-evaluation is compared as it stands)."""
    if not len(att.rid):
        return []
    ca = _class_arrays(names, translations, noise_arr)
    claim_hw = res.hw[att.subject]
    expected = res.y[att.subject]
    var = noise_arr[claim_hw] ** 2 + noise_arr[att.hw] ** 2
    if not config.naive:
        moved = (claim_hw != att.hw) & ~att.reeval
        shifted = ca.from_target(ca.to_target(expected, claim_hw), att.hw)
        extra = np.where(ca.has[claim_hw], ca.offset_sd[claim_hw] ** 2 + ca.interaction_sd[claim_hw] ** 2, 0.0)
        extra = extra + np.where(ca.has[att.hw], ca.offset_sd[att.hw] ** 2 + ca.interaction_sd[att.hw] ** 2, 0.0)
        expected = np.where(moved, shifted, expected)
        var = np.where(moved, var + extra, var)
    sd = np.where(att.reeval, math.sqrt(2.0) * config.reeval_sd, np.sqrt(var))
    residual = att.y - expected
    tol = config.check_z * sd + config.check_slack
    agrees = (np.abs(residual) <= tol).tolist()
    conclusive = (tol <= config.check_max_tolerance).tolist()
    subject_author = res.author[att.subject].tolist()
    rid = cols.r_id
    subject_ids = [rid[s] for s in res.src[att.subject].tolist()]
    author_names = cols.authors
    subject_authors = [author_names[a] for a in subject_author]
    attesters = [author_names[a] for a in att.author.tolist()]
    return list(map(AttestationCheck._make, zip(att.rid, subject_ids, subject_authors, attesters, agrees, residual.tolist(), tol.tolist(), conclusive)))


def _degraded_factors(res: _Results, cols: EvidenceColumns, results, config: EstimatorConfig) -> np.ndarray:
    """Per result, `degraded_factor` if its run was degraded (else 1): its author said so, or it
    trained fewer than `degraded_ratio` times the tokens that results of the same hardware
    class and model shape usually train in the budget (their median; needs two or more)."""
    tokens, budget = cols.r_tokens[res.src], cols.r_budget[res.src]
    factor = np.where(cols.r_degraded[res.src], config.degraded_factor, 1.0)
    timed = np.flatnonzero((tokens > 0) & (budget > 0))
    if not len(timed):
        return factor
    # each candidate's model shape as a code, kept with the columns by candidate id (the id fixes base and diff)
    shape_code: dict[str, int] = cols.memo.setdefault("shape codes", {"": -1})
    known: dict[str, int] = cols.memo.setdefault("shape of candidate", {})
    codes, first, which = np.unique(res.cand[timed], return_index=True, return_inverse=True)
    names = cols.candidates
    code_list = []  # a list, then one array: assigning numpy elements one by one costs more than the lookups
    for c, i in zip(codes.tolist(), res.src[timed[first]].tolist()):
        code = known.get(names[c])
        if code is None:
            r = results[i]
            code = known[r.candidate] = shape_code.setdefault(_throughput_shape(r.candidate, r.base, r.diff), len(shape_code) - 1)
        code_list.append(code)
    per_code = np.asarray(code_list, dtype=np.intp)
    shapes = per_code[which.reshape(-1)]
    ok = shapes >= 0
    timed, shapes = timed[ok], shapes[ok]
    speed = tokens[timed] / budget[timed]
    key = res.hw[timed] * max(1, len(shape_code)) + shapes
    order = np.lexsort((speed, key))
    k_sorted, s_sorted = key[order], speed[order]
    starts = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]])
    ends = np.r_[starts[1:], len(k_sorted)]
    usual = np.full(len(starts), -np.inf)  # -inf: fewer than two results, no comparison
    for g, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        n = b - a
        if n >= 2:
            mid = a + n // 2
            usual[g] = s_sorted[mid] if n % 2 else (s_sorted[mid - 1] + s_sorted[mid]) / 2
    group = np.empty(len(order), dtype=np.intp)
    group[order] = np.repeat(np.arange(len(starts)), ends - starts)
    slow = speed < config.degraded_ratio * usual[group]
    factor[timed[slow]] = config.degraded_factor
    return factor


def _parents(res: _Results, cols: EvidenceColumns) -> dict[int, tuple[int, ...]]:
    """Each candidate's parent candidates (codes, in sorted order), from its results' parent
    record ids: ids that are not results here are unknown parents and are dropped; a candidate
    is never its own parent."""
    child, parent = res.at[cols.parent_child], res.at[cols.parent_of]
    ok = (child >= 0) & (parent >= 0)
    cc, pc = res.cand[child[ok]], res.cand[parent[ok]]
    other = cc != pc
    width = max(1, len(cols.candidates))
    pairs = np.unique(cc[other].astype(np.int64) * width + pc[other])
    cc, pc = (pairs // width).tolist(), (pairs % width).tolist()
    out: dict[int, tuple[int, ...]] = {}
    start = 0
    for i in range(1, len(cc) + 1):
        if i == len(cc) or cc[i] != cc[start]:
            out[cc[start]] = tuple(pc[start:i])
            start = i
    return out


def _lineage_sd(o: _Obs, trust: np.ndarray, t: int, families, noise: Mapping[str, float], hw: str, config) -> float:
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
    (random proposer +0.0030 +- 0.0017 against none).
    `families` are (child, parent codes) pairs in the children's order."""
    here = (o.hw == t) & (o.kind != _REEVAL) & (trust >= _TRUSTED)
    sum_y = np.bincount(o.cand[here], weights=o.y[here], minlength=1).tolist()
    sum_n = np.bincount(o.cand[here], minlength=1).astype(float).tolist()
    size = len(sum_n)
    noise_var = noise.get(hw, config.noise_sd) ** 2
    squares, explained = [], []
    for child, parents in families:
        if not parents or child >= size or not sum_n[child] or any(p >= size or not sum_n[p] for p in parents):
            continue
        gap = sum_y[child] / sum_n[child] - sum(sum_y[p] / sum_n[p] for p in parents) / len(parents)
        squares.append(gap * gap)
        explained.append(noise_var * (1.0 / sum_n[child] + sum(1.0 / sum_n[p] for p in parents) / len(parents) ** 2))
    families = len(squares)
    excess = max(0.0, float(np.median(squares)) / 0.4549 - float(np.median(explained))) * families if families else 0.0
    prior_families = 2.0
    return math.sqrt((prior_families * config.lineage_sd**2 + excess) / (prior_families + families))


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


def _lineage_triples(parents_of: list[tuple[int, ...]], m0: float, prior_prec: float, lin_prec: float, b: np.ndarray):
    """The lineage prior (a Gaussian Markov random field over the family tree) as (row, col,
    value) triples over local candidate indices, in the candidates' order; adds its part of b.
    A root is held near the pool's level m0; a child near the mean of its parents, with a weak
    anchor that keeps cyclic or orphaned families proper."""
    counts = np.fromiter(map(len, parents_of), np.intp, len(parents_of))
    blocks_i, blocks_j, blocks_v, blocks_key = [], [], [], []
    roots = np.flatnonzero(counts == 0)
    blocks_i.append(roots), blocks_j.append(roots), blocks_v.append(np.full(len(roots), prior_prec)), blocks_key.append(roots.astype(float))
    b[roots] += m0 * prior_prec
    for p in np.unique(counts[counts > 0]).tolist():
        children = np.flatnonzero(counts == p)
        idx = np.column_stack([children, np.asarray([parents_of[i] for i in children.tolist()], dtype=np.intp).reshape(len(children), p)])
        coef = [1.0] + [-1.0 / p] * p
        ii, jj, vv = [], [], []
        for a, ca in enumerate(coef):
            for bb, cb in enumerate(coef):
                ii.append(idx[:, a]), jj.append(idx[:, bb]), vv.append(np.full(len(children), lin_prec * ca * cb))
        ii.append(children), jj.append(children), vv.append(np.full(len(children), 1e-4 * prior_prec))
        # row-major per child, as one loop over the candidates would emit them
        blocks_i.append(np.column_stack(ii).ravel()), blocks_j.append(np.column_stack(jj).ravel()), blocks_v.append(np.column_stack(vv).ravel())
        blocks_key.append(np.repeat(children.astype(float), len(ii)))
        b[children] += 1e-4 * m0 * prior_prec
    key = np.concatenate(blocks_key)
    order = np.argsort(key, kind="stable")
    return np.concatenate(blocks_i)[order], np.concatenate(blocks_j)[order], np.concatenate(blocks_v)[order]


def _solve(o, trust, claim, cap, res, parents, t, names, noise, noise_arr, translations, tau, tau_mean, authors, checks, st, cols, results, config, transfer=None) -> Posterior:
    hw = names[t]
    # candidates: everything with evidence (observed), each with its observed parents
    codes = np.unique(o.cand)  # sorted codes: sorted ids
    k = len(codes)
    local = np.full(len(cols.candidates), -1, dtype=np.intp)
    local[codes] = np.arange(k)
    candidates = [cols.candidates[c] for c in codes.tolist()]
    local_of = local.tolist()  # plain ints: indexing a numpy array per parent costs ~1 us each
    parents_of_codes = [tuple(p for p in parents.get(c, ()) if local_of[p] >= 0) for c in codes.tolist()]
    parents_local = [tuple(local_of[p] for p in ps) for ps in parents_of_codes]
    class_codes = [h for h in np.unique(o.hw).tolist() if h != t]
    classes = [names[h] for h in class_codes]
    k_off = k  # the class offsets follow the candidates
    hi = {h: k_off + j for j, h in enumerate(classes)}
    n = k + len(classes)
    # per-knob transfer terms of each foreign class (see _fit_knob_transfer), after the offsets
    phi, beta_sd, tau_b = transfer if transfer is not None else ({}, None, {})
    n_feat = len(beta_sd) if beta_sd is not None else 0
    bi = {h: n + j * n_feat for j, h in enumerate(classes)}
    n += len(classes) * n_feat
    tau = {**tau, **tau_b}

    cls_index = np.full(len(names), -1, dtype=np.intp)
    cls_index[class_codes] = np.arange(len(class_codes))
    m = len(o)
    o_c = local[o.cand]
    o_h = cls_index[o.hw]  # -1: the target
    o_re = o.kind == _REEVAL
    o_y = o.y
    o_claim, o_cap = claim, cap
    o_w = claim * cap
    on_target = o_h < 0
    # per class (the target last, at index -1): translation, noise and interaction
    tr = [translations.get(h) for h in classes]
    has_t = np.asarray([x is not None for x in tr] + [False])
    pivot = np.asarray([x.pivot if x else 0.0 for x in tr] + [0.0])
    scale = np.asarray([x.scale if x else 1.0 for x in tr] + [1.0])
    offset = np.asarray([x.offset if x else 0.0 for x in tr] + [0.0])
    class_noise = np.asarray([noise.get(h, config.noise_sd) for h in classes] + [noise.get(hw, config.noise_sd)])
    class_tau2 = np.asarray([tau.get(h, config.interaction_sd) ** 2 for h in classes] + [0.0])
    translated = has_t[o_h]

    # pool level on the target hardware: trusted target measurements, else translated others
    ys = np.where(translated, pivot[o_h] + (o_y - pivot[o_h]) / scale[o_h] - offset[o_h], o_y)
    ws = o_w * np.where(on_target, 4.0, 1.0)
    m0 = float(np.average(ys, weights=ws)) if len(ys) else 0.0

    # the normal equations, assembled as (row, col, value) triples and summed in one go
    b = np.zeros(n)
    prior_prec = 1.0 / config.prior_sd**2
    lineage_sd = _lineage_sd(o, trust, t, zip(codes.tolist(), parents_of_codes), noise, hw, config)
    lin_prec = 1.0 / lineage_sd**2
    li, lj, lv = _lineage_triples(parents_local, m0, prior_prec, lin_prec, b)
    ai: list[np.ndarray] = [li]
    aj: list[np.ndarray] = [lj]
    av: list[np.ndarray] = [lv]
    for h in classes:
        j = hi[h]
        x = translations.get(h)
        centre = x.offset if x else 0.0
        ai.append(np.asarray([j])), aj.append(np.asarray([j])), av.append(np.asarray([1.0 / config.offset_sd**2]))
        b[j] += centre / config.offset_sd**2

    # observations, aggregated per (candidate, class): they share one interaction term
    nsd = np.where(o_re, config.reeval_sd, class_noise[o_h])
    v = nsd**2 / np.minimum(1.0, o_w) + config.lie_sd**2 * (1.0 - np.minimum(1.0, o_claim)) / np.maximum(o_claim, 1e-12) / np.maximum(o_cap, 1e-12)
    y = np.where(translated, pivot[o_h] + (o_y - pivot[o_h]) / scale[o_h], o_y)  # the offset stays a parameter of the model
    v = np.where(translated, v / scale[o_h] ** 2, v)
    row_sd = np.sqrt(v + class_tau2[o_h])  # per observation, for `explain`
    cell_keys, cell_of = np.unique(o_c * (len(classes) + 1) + (o_h + 1), return_inverse=True)
    cell_of = cell_of.reshape(-1)
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
    ai.append(ti), aj.append(ti), av.append(cell_prec[target_cell])
    ai.append(np.concatenate([fi, fj, fi, fj])), aj.append(np.concatenate([fi, fj, fj, fi])), av.append(np.tile(fp, 4))
    b += np.bincount(cell_c[plain], weights=cell_info[plain], minlength=n) + np.bincount(fj, weights=cell_info[foreign_cell], minlength=n)
    for h in classes if n_feat else ():
        sl = np.arange(bi[h], bi[h] + n_feat)
        ai.append(sl), aj.append(sl), av.append(1.0 / beta_sd**2)
    for idx, coef, prec in dense:
        ai.append(np.repeat(idx, len(idx))), aj.append(np.tile(idx, len(idx))), av.append((np.outer(coef, coef) * prec).ravel())
    # sparse in the candidates (lineage), dense only in the few class and transfer terms
    solution = gmrf.solve(np.concatenate(ai).astype(np.intp), np.concatenate(aj).astype(np.intp), np.concatenate(av).astype(float), b, k)
    theta, var = solution.mean, solution.var
    mean = theta[:k].copy()
    sd = np.sqrt(np.maximum(var[:k], 1e-12))

    # translations as the joint model sees them
    final_tr: dict[str, Translation] = {}
    for h in classes:
        x = translations.get(h)
        j = hi[h]
        final_tr[h] = Translation(h, float(theta[j]), float(math.sqrt(max(var[j], 0.0))), x.scale if x else 1.0, x.overlaps if x else 0, noise.get(h, config.noise_sd), x.pivot if x else 0.0, x.interaction_sd if x else config.interaction_sd)

    def build_rows() -> dict[str, list[EvidenceRow]]:
        # only `explain` reads these; the bandit never pays for building them
        verdicts: dict[str, list[str]] = defaultdict(list)
        for chk in checks:
            word = ("agrees" if chk.agrees else "DISAGREES") if chk.conclusive else "inconclusive"
            verdicts[chk.subject_id].append(f"{chk.attestation_id[:12]} {word} ({chk.residual:+.4f}, tol {chk.tolerance:.4f})")
        rows: dict[str, list[EvidenceRow]] = defaultdict(list)
        for q in range(m):
            author, h, y_q = cols.authors[o.author[q]], names[o.hw[q]], float(o.y[q])
            x = final_tr.get(h)
            status = authors[author].status if author in authors else st(author)
            rid = o.record_id(q)
            rows[cols.candidates[o.cand[q]]].append(EvidenceRow(rid, KINDS[o.kind[q]], author, status, h, y_q, float(y_q if x is None else x.to_target(y_q)), float(trust[q]), float(claim[q]), float(cap[q]), float(row_sd[q]), tuple(verdicts.get(rid, ()))))
        return dict(rows)

    held = np.minimum(1.0, o_claim)
    support = np.zeros(k)
    np.maximum.at(support, o_c, held)
    here = on_target & ~o_re & (o_claim >= TRUSTED_WEIGHT)  # untrusted evidence never establishes
    established = np.bincount(o_c[here], weights=held[here], minlength=k)
    info = _candidate_info(res, codes, local, parents_of_codes, established, support, authors, cols, results)
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


def _candidate_info(res, codes, local, parents_of_codes, established, support, authors, cols, results) -> dict[str, CandidateInfo]:
    """What the pool knows of each modelled candidate: its results (all of them, whatever
    weight they got), their authors and classes, and the record to cite: own first, then the
    most trusted author's, the earliest, the smallest id."""
    keep = np.flatnonzero(local[res.cand] >= 0)
    author_names = cols.authors
    not_own = np.asarray([authors[a].status != OWN if a in authors else True for a in author_names], dtype=bool)
    neg_w = np.asarray([-authors[a].weight if a in authors else -0.0 for a in author_names], dtype=float)
    ra = res.author[keep]
    # within a candidate: by rank (the representative first), and also by id (the record ids)
    by_id = keep[np.argsort(res.cand[keep], kind="stable")]  # results are in id order already
    by_rank = keep[np.lexsort((keep, res.created[keep], neg_w[ra], not_own[ra], res.cand[keep]))]
    counts = np.bincount(local[res.cand[keep]], minlength=len(codes))
    ends = np.cumsum(counts)
    starts = ends - counts
    rid = cols.r_id
    where_in_evidence = tuple(res.src[by_id].tolist())  # stable as records arrive: what an earlier estimate's info is keyed by (ints: untracked by GC)
    first = res.src[by_id[np.minimum(starts, max(len(by_id) - 1, 0))]].tolist() if len(by_id) else [0] * len(codes)
    rep = res.src[by_rank[np.minimum(starts, max(len(by_rank) - 1, 0))]].tolist() if len(by_rank) else [0] * len(codes)
    info: dict[str, CandidateInfo] = {}
    names, r_author, r_hw = cols.candidates, cols.r_author, cols.r_hw
    # a candidate whose results, representative, weights and parents are those of an earlier
    # estimate on these columns gets the same (immutable) CandidateInfo back: most do
    earlier: dict[str, tuple[tuple, CandidateInfo]] = cols.memo.setdefault("candidate info", {})
    for i, (c, s, e, est, sup) in enumerate(zip(codes.tolist(), starts.tolist(), ends.tolist(), established.tolist(), support.tolist())):
        cand = names[c]
        parents = tuple(map(names.__getitem__, parents_of_codes[i]))
        mine = where_in_evidence[s:e]
        key = (mine, rep[i], est, sup, parents)
        seen = earlier.get(cand)
        if seen is not None and seen[0] == key:
            info[cand] = seen[1]
            continue
        if e == s:  # no result (cannot happen: every observation measures a result's candidate)
            info[cand] = CandidateInfo(cand, "", {}, (), "", parents, (), (), est, 0, sup, "sp1024")
            continue
        r = results[first[i]]
        one = e - s == 1  # the common case: one result, one author, one class
        who = [author_names[r_author[j]] for j in mine]
        where = [cols.classes[r_hw[j]] for j in mine]
        info[cand] = CandidateInfo(
            cand,
            r.base,
            dict(r.diff),
            tuple(rid[j] for j in mine),
            rid[rep[i]],
            parents,
            (who[0],) if one else tuple(sorted(set(who))),
            (where[0],) if one else tuple(sorted(set(where))),
            est,
            e - s,
            sup,
            r.tokenizer,
        )
        earlier[cand] = (key, info[cand])
    return info

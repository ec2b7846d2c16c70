"""How untrusted evidence enters the estimator: judged for plausibility, pooled across keys.

Evidence is *trusted* when its weight (the claim weight of pool/trust_weights.py) is at least
`TRUSTED_WEIGHT`: own and pinned keys' results and re-measurements, and an unknown key's claim
that a trusted key's check agreed with. Everything else is a stranger's word, and keys are free.
Two rules apply to it before the model is solved:

- Plausibility. Each untrusted observation is compared with what trusted evidence predicts for
  its candidate on the target hardware: the candidate's own trusted measurements if it has
  any; else the mean of its parents' predictions widened by the lineage sd per generation;
  else the level of the trusted candidates here, widened by their spread (at least `prior_sd`).
  Cross-class values are translated, with the translation's uncertainty added. A claim more
  than `plausible_z` standard deviations off is *implausible*, and its weight is multiplied by
  (plausible_z / z)^4: the further out, the less it counts and the less it pulls (far out, its
  pull on the mean falls as 1 / z^3), so stating an absurd number never buys influence. With no trusted
  evidence at all there is nothing to judge by, and nothing is marked.
- Crowds (`trust_weights.crowd_factors`): the untrusted keys behind one candidate count
  together as `unknown_crowd` keys (one, by default), however many they are.

Guarantees: trusted observations are returned unchanged; an untrusted observation's weight
never rises; the result does not depend on the order of the observations.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from p2pgolf.pool.trust_weights import TRUSTED_WEIGHT, TrustPolicy, crowd_factors

_MAX_GENERATIONS = 32  # how far up a lineage a prediction is sought


def parents_by_candidate(results: Iterable[Any]) -> dict[str, tuple[str, ...]]:
    """Each candidate's parent candidates, from its results' parent record ids (ids not in
    `results` are unknown parents and are dropped; a candidate is never its own parent)."""
    results = list(results)
    rec_candidate = {r.record_id: r.candidate for r in results}
    parents: dict[str, set[str]] = defaultdict(set)
    for r in results:
        parents[r.candidate].update(rec_candidate[p] for p in r.parents if p in rec_candidate)
    return {c: tuple(sorted(ps - {c})) for c, ps in parents.items()}


def is_trusted(claim: float) -> bool:
    """Whether evidence of this claim weight is trusted evidence."""
    return claim >= TRUSTED_WEIGHT


def plausibility(
    claim: np.ndarray,
    cand: np.ndarray,
    hw: np.ndarray,
    y: np.ndarray,
    reeval: np.ndarray,
    target: int,
    classes: Any,
    parents: Mapping[int, tuple[int, ...]],
    lineage_sd: float,
    config: Any,
) -> np.ndarray:
    """z of each untrusted observation against what trusted evidence predicts for its
    candidate here (see the module docstring); NaN for trusted ones, and everywhere when nothing
    is trusted. Observations are columns: claim weight, candidate code, class code, value and
    whether each is a re-evaluation; `classes` holds per class code its translation onto the
    `target` class and its noise (estimator._ClassArrays); `parents` maps a candidate code to
    its parents' codes."""
    z = np.full(len(claim), np.nan)
    trusted = claim >= TRUSTED_WEIGHT
    if not trusted.any():
        return z
    value, var = _on_target(hw, y, reeval, target, classes, config)
    tc = cand[trusted]
    v = var[trusted] / np.minimum(1.0, claim[trusted])
    first_seen = np.sort(np.unique(tc, return_index=True)[1])
    known_codes = tc[first_seen]  # in order of first appearance
    size = int(cand.max()) + 1
    prec = np.bincount(tc, weights=1.0 / v, minlength=size)
    mean = np.bincount(tc, weights=value[trusted] / v, minlength=size) / np.where(prec > 0, prec, 1.0)
    known = {c: (m, 1.0 / p) for c, m, p in zip(known_codes.tolist(), mean[known_codes].tolist(), prec[known_codes].tolist())}
    means = mean[known_codes]
    level = float(np.median(means))
    spread = 1.4826 * float(np.median(np.abs(means - level))) if len(means) > 2 else 0.0
    root_var = max(config.prior_sd, spread) ** 2
    memo: dict[int, tuple[float, float] | None] = {}

    def predict(c: int, depth: int = 0) -> tuple[float, float] | None:
        if c in known:
            return known[c]
        if c in memo:
            return memo[c]
        memo[c] = None  # guards cycles in a (peer-supplied) family tree
        if depth >= _MAX_GENERATIONS:
            return None
        found = [p for p in (predict(q, depth + 1) for q in parents.get(c, ())) if p is not None]
        if found:
            k = len(found)
            memo[c] = (sum(m for m, _ in found) / k, sum(v for _, v in found) / k**2 + lineage_sd**2)
        return memo[c]

    untrusted = np.flatnonzero(~trusted)
    uc = cand[untrusted]
    first = np.sort(np.unique(uc, return_index=True)[1])  # predictions are sought in the order claims come
    exp_mean = np.full(size, level)
    exp_var = np.full(size, root_var)
    for c in uc[first].tolist():
        found = predict(c)
        if found:
            exp_mean[c], exp_var[c] = found
    z[untrusted] = (value[untrusted] - exp_mean[uc]) / np.sqrt(exp_var[uc] + var[untrusted])
    return z


def discount_columns(claim: np.ndarray, cap: np.ndarray, cand: np.ndarray, author: np.ndarray, z: np.ndarray, policy: TrustPolicy, plausible_z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`discount` on columns (claim weight, cap, candidate and author codes, z with NaN where
    none): the new claim weights and caps, and which observations were implausible."""
    untrusted = claim < TRUSTED_WEIGHT
    hit = untrusted & (np.abs(np.nan_to_num(z, nan=0.0)) > plausible_z)
    claim = np.where(hit, claim * (plausible_z / np.where(hit, z, 1.0)) ** 4, claim)
    if untrusted.any():
        keys = np.unique(cand[untrusted].astype(np.int64) * (int(author.max()) + 1) + author[untrusted])
        size = int(cand.max()) + 1
        keys_per_candidate = np.bincount(keys // (int(author.max()) + 1), minlength=size)
        crowd = np.minimum(1.0, policy.unknown_crowd / np.maximum(keys_per_candidate[cand], 1))
        cap = np.where(untrusted, cap * crowd, cap)
    return claim, cap, hit


def discount(
    weighted: Sequence[tuple[Any, float, float, float, float]],
    z: Mapping[str, float],
    policy: TrustPolicy,
    plausible_z: float,
) -> tuple[list[tuple[Any, float, float, float, float]], dict[str, float]]:
    """The observations with untrusted ones discounted: an implausible claim's weight times
    (plausible_z / z)^4, then each candidate's crowd of untrusted keys pooled. Returns the new
    list and the implausible record ids with their z. (The estimator calls `discount_columns`
    on its columns; this is the same rule over (observation, trust, claim, cap, weight) rows.)"""
    cand_code: dict[str, int] = {}
    author_code: dict[str, int] = {}
    n = len(weighted)
    cand = np.fromiter((cand_code.setdefault(o.candidate, len(cand_code)) for o, *_ in weighted), np.int64, n)
    author = np.fromiter((author_code.setdefault(o.author, len(author_code)) for o, *_ in weighted), np.int64, n)
    claim = np.fromiter((c for _, _, c, _, _ in weighted), float, n)
    cap = np.fromiter((c for _, _, _, c, _ in weighted), float, n)
    zs = np.fromiter((z.get(o.record_id, np.nan) for o, *_ in weighted), float, n)
    if not n:
        return [], {}
    new_claim, new_cap, _ = discount_columns(claim, cap, cand, author, zs, policy, plausible_z)
    out = []
    for (o, trust, c, k, w), c2, k2 in zip(weighted, new_claim.tolist(), new_cap.tolist()):
        out.append((o, trust, c, k, w) if is_trusted(c) else (o, trust, c2, k2, c2 * k2))
    implausible = {rid: float(v) for rid, v in z.items() if abs(v) > plausible_z}
    return out, implausible


def _on_target(hw: np.ndarray, y: np.ndarray, reeval: np.ndarray, target: int, classes: Any, config: Any) -> tuple[np.ndarray, np.ndarray]:
    """Observations' values as they would read on the target class, and their variances."""
    nsd = np.where(reeval, config.reeval_sd, classes.noise[hw])
    foreign = hw != target
    moved = foreign & classes.has[hw]
    value = np.where(moved, classes.to_target(y, hw), y)
    scale = classes.scale[hw]
    var = np.where(moved, nsd**2 / scale**2 + classes.offset_sd[hw] ** 2 + classes.interaction_sd[hw] ** 2, nsd**2 + np.where(foreign, config.offset_sd**2, 0.0))
    return value, var

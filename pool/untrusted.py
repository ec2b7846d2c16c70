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
    weighted: Sequence[tuple[Any, float, float, float, float]],
    parents: Mapping[str, tuple[str, ...]],
    hw: str,
    noise: Mapping[str, float],
    translations: Mapping[str, Any],
    lineage_sd: float,
    config: Any,
) -> dict[str, float]:
    """z of each untrusted observation (record id -> z) against what trusted evidence predicts
    for its candidate here (see the module docstring); empty when nothing is trusted."""
    trusted: dict[str, list[tuple[float, float]]] = defaultdict(list)  # candidate -> (value, var) on target
    for o, trust, claim, cap, w in weighted:
        if is_trusted(claim):
            value, var = _on_target(o, hw, noise, translations, config)
            trusted[o.candidate].append((value, var / min(1.0, claim)))
    if not trusted:
        return {}
    known: dict[str, tuple[float, float]] = {}
    for c, vs in trusted.items():
        prec = sum(1.0 / v for _, v in vs)
        known[c] = (sum(y / v for y, v in vs) / prec, 1.0 / prec)
    means = np.asarray([m for m, _ in known.values()])
    level = float(np.median(means))
    spread = 1.4826 * float(np.median(np.abs(means - level))) if len(means) > 2 else 0.0
    root_var = max(config.prior_sd, spread) ** 2
    memo: dict[str, tuple[float, float] | None] = {}

    def predict(c: str, depth: int = 0) -> tuple[float, float] | None:
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

    out: dict[str, float] = {}
    for o, trust, claim, cap, w in weighted:
        if is_trusted(claim):
            continue
        value, var = _on_target(o, hw, noise, translations, config)
        expected = predict(o.candidate) or (level, root_var)
        out[o.record_id] = (value - expected[0]) / math.sqrt(expected[1] + var)
    return out


def discount(
    weighted: Sequence[tuple[Any, float, float, float, float]],
    z: Mapping[str, float],
    policy: TrustPolicy,
    plausible_z: float,
) -> tuple[list[tuple[Any, float, float, float, float]], dict[str, float]]:
    """The observations with untrusted ones discounted: an implausible claim's weight times
    (plausible_z / z)^4, then each candidate's crowd of untrusted keys pooled. Returns the new
    list and the implausible record ids with their z."""
    implausible = {rid: float(v) for rid, v in z.items() if abs(v) > plausible_z}
    crowd = crowd_factors(((o.candidate, o.author) for o, _, claim, _, _ in weighted if not is_trusted(claim)), policy)
    out = []
    for o, trust, claim, cap, w in weighted:
        if not is_trusted(claim):
            if o.record_id in implausible:
                claim *= (plausible_z / implausible[o.record_id]) ** 4
            cap *= crowd[(o.candidate, o.author)]
            w = claim * cap
        out.append((o, trust, claim, cap, w))
    return out, implausible


def _on_target(o: Any, hw: str, noise: Mapping[str, float], translations: Mapping[str, Any], config: Any) -> tuple[float, float]:
    """An observation's value as it would read on the target class, and its variance."""
    nsd = config.reeval_sd if o.kind == "reeval" else noise.get(o.hw, config.noise_sd)
    t = translations.get(o.hw) if o.hw != hw else None
    if t is None:
        return float(o.y), nsd**2 + (config.offset_sd**2 if o.hw != hw else 0.0)
    return float(t.to_target(o.y)), nsd**2 / t.scale**2 + t.offset_sd**2 + t.interaction_sd**2

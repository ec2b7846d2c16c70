"""How much each author's evidence counts: trust status, moved by attestations, capped by volume.

Guarantees:
- own and pinned keys weigh 1.0 and blocked keys 0.0, whatever the attestations say (the user
  decided those);
- an unknown key starts at `unknown_weight` (never zero: a stranger's idea is worth trying, never
  believed outright) and moves with attestations by other trusted keys: each agreeing check
  multiplies its weight by `agree_gain`, each disagreeing check by `disagree_factor` (both
  raised to the attester's weight), kept within [min_weight, max_earned_weight];
- only trusted keys vouch: an attestation moves trust or a claim's weight only if its attester's
  starting weight is at least `TRUSTED_WEIGHT` (own and pinned keys), since keys are free and a
  liar can attest its own fakes from as many fresh keys as it likes;
- no single key dominates by volume: an author's results on one candidate count as at most
  `per_candidate_cap` results, and an unknown author's results beyond `author_volume_cap`
  records are scaled down so that together they weigh as much as that many;
- no crowd of keys dominates by number (sybils): the untrusted evidence of one candidate, from
  however many keys, counts together as much as `unknown_crowd` keys' (`crowd_factors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # numpy only for the array helper; the admission gate imports this module too
    import numpy as np

OWN, PINNED, BLOCKED, UNKNOWN = "own", "pinned", "blocked", "unknown"
STATUSES = (OWN, PINNED, BLOCKED, UNKNOWN)
TRUSTED_STATUSES = (OWN, PINNED)  # keys whose records are believed as they stand

StatusFn = Callable[[str], str]

# Weight from which evidence is trusted: own and pinned keys, an unknown key's claim raised by an
# agreeing check from a trusted key, or a key that trusted checks raised this far.
TRUSTED_WEIGHT = 0.5


@dataclass(frozen=True)
class TrustPolicy:
    """The numbers behind trust; `unknown_weight` is the user's setting."""

    unknown_weight: float = 0.1
    max_earned_weight: float = 0.6  # a stranger's key never counts as much as a pinned one
    min_weight: float = 1e-4  # above zero: one bad check does not erase a key forever
    agree_gain: float = 1.5
    disagree_factor: float = 0.05
    per_candidate_cap: float = 3.0
    author_volume_cap: int = 100
    unknown_crowd: float = 1.0  # however many untrusted keys back one candidate, they count as this many

    def __post_init__(self) -> None:
        if not 0.0 < self.unknown_weight < 1.0:
            raise ValueError(f"unknown_weight={self.unknown_weight} must be in (0, 1): strangers count a little, never zero, never fully")
        if not self.min_weight <= self.unknown_weight <= self.max_earned_weight <= 1.0:
            raise ValueError("trust policy needs min_weight <= unknown_weight <= max_earned_weight <= 1")
        if not self.unknown_crowd > 0.0:
            raise ValueError(f"unknown_crowd={self.unknown_crowd} must be > 0: a crowd of strangers counts as this many keys")


class AttestationCheck(NamedTuple):  # a tuple: the estimator makes one per attestation, ~15,000 a decision
    """The verdict on one attestation: did the re-measurement agree with the claim?"""

    attestation_id: str
    subject_id: str
    subject_author: str
    attester: str
    agrees: bool
    residual: float  # measured minus expected (on the attester's hardware), bpb
    tolerance: float
    conclusive: bool = True  # False when the translation is too uncertain to judge; then it moves nothing


@dataclass(frozen=True)
class AuthorTrust:
    """One author's standing: status, starting weight, earned weight, and the checks behind it."""

    author: str
    status: str
    base_weight: float
    weight: float
    agreements: float
    disagreements: float


def base_weight(status: str, policy: TrustPolicy) -> float:
    """The weight a status gives before any attestation."""
    if status in (OWN, PINNED):
        return 1.0
    if status == BLOCKED:
        return 0.0
    if status == UNKNOWN:
        return policy.unknown_weight
    raise ValueError(f"unknown trust status {status!r}; expected one of {', '.join(STATUSES)}")


def author_trust(
    authors: Iterable[str],
    status: StatusFn,
    checks: Iterable[AttestationCheck],
    policy: TrustPolicy = TrustPolicy(),
) -> dict[str, AuthorTrust]:
    """Each author's trust after the attestation checks. Attesters count with their starting
    weight (not their earned one) so that trust cannot bootstrap itself in a loop, and only
    trusted ones (starting weight >= TRUSTED_WEIGHT) count at all."""
    statuses = {a: status(a) for a in authors}
    for check in checks:
        for key in (check.subject_author, check.attester):
            if key not in statuses:
                statuses[key] = status(key)
    agree: dict[str, float] = {a: 0.0 for a in statuses}
    disagree: dict[str, float] = {a: 0.0 for a in statuses}
    for check in checks:
        if check.attester == check.subject_author or not check.conclusive:
            continue  # nobody vouches for themselves; a blurred check proves nothing
        w = base_weight(statuses[check.attester], policy)
        if w < TRUSTED_WEIGHT:
            continue  # a stranger's check is free to make from a fresh key: it proves nothing
        if check.agrees:
            agree[check.subject_author] += w
        else:
            disagree[check.subject_author] += w
    out: dict[str, AuthorTrust] = {}
    for author, st in statuses.items():
        w0 = base_weight(st, policy)
        w = w0
        if st == UNKNOWN:
            w = w0 * policy.agree_gain ** agree[author] * policy.disagree_factor ** disagree[author]
            w = min(policy.max_earned_weight, max(policy.min_weight, w))
        out[author] = AuthorTrust(author, st, w0, w, agree[author], disagree[author])
    return out


def claim_weight(author_weight: float, checks: Iterable[AttestationCheck], attester_weight: Callable[[str], float]) -> float:
    """The weight of one claimed result: its author's, raised by agreeing re-measurements from
    trusted others (as if each were an independent vouch) and cut by disagreeing ones; checks
    by attesters whose weight is below TRUSTED_WEIGHT move nothing."""
    w = author_weight
    for check in checks:
        if check.attester == check.subject_author or not check.conclusive:
            continue
        a = attester_weight(check.attester)
        if a < TRUSTED_WEIGHT:
            continue
        if check.agrees:
            w = 1.0 - (1.0 - w) * (1.0 - a)
        else:
            w *= 1.0 - 0.98 * a
    return w


def volume_factors(trusted: np.ndarray, n_records: np.ndarray, policy: TrustPolicy) -> np.ndarray:
    """Per author (arrays: own or pinned, records held), the scale for each of its records so
    that its volume cannot buy influence: 1 for a trusted key or one within the cap, else
    author_volume_cap / n_records."""
    import numpy as np

    return np.where(trusted | (n_records <= policy.author_volume_cap), 1.0, policy.author_volume_cap / np.maximum(n_records, 1))


def crowd_factors(backers: Iterable[tuple[str, str]], policy: TrustPolicy) -> dict[tuple[str, str], float]:
    """Scale for each (candidate, author) pair of untrusted evidence so that the untrusted keys
    behind one candidate count together as `policy.unknown_crowd` keys, however many they are:
    n keys each get min(1, unknown_crowd / n). Keys are free, so fifty fresh keys backing one
    claim are no more independent than one."""
    keys: dict[str, set[str]] = {}
    for candidate, author in backers:
        keys.setdefault(candidate, set()).add(author)
    out: dict[tuple[str, str], float] = {}
    for candidate, authors in keys.items():
        factor = min(1.0, policy.unknown_crowd / len(authors))
        for author in authors:
            out[(candidate, author)] = factor
    return out


def static_status(own: str, pinned: Iterable[str] = (), blocked: Iterable[str] = ()) -> StatusFn:
    """A status function from fixed key sets (for the simulator and tests; the node passes
    its TrustStore's `status`)."""
    pinned_set, blocked_set = frozenset(pinned), frozenset(blocked)

    def status(key: str) -> str:
        if key == own:
            return OWN
        if key in blocked_set:
            return BLOCKED
        if key in pinned_set:
            return PINNED
        return UNKNOWN

    return status

"""The challenge's rules for a new record, checked on the evidence a pool holds.

`check_submission` takes the candidate's results (own and pinned keys only count as evidence
of our run; imported claims never do) and returns one `Rule` per rule with its numbers:
- size: every seed's artifact plus code within the cap (16,000,000 bytes);
- budget: every seed trained within the track's budget, on the track's benchmark;
- seeds: at least `min_seeds` distinct seeds on the track's hardware, from own or pinned keys
  ("2 of 3 seeds on 8xH100" when short);
- significance: a one-sided test that the mean val_loss over seeds is lower than the baseline's
  by at least `min_gain_nats` (0.005), at p < `alpha` (0.01). The baseline is given in bpb
  (`--against`, or the best imported record of the track); it is put on the nats scale with the
  candidate's own loss-per-bpb ratio (nats per byte and bits per byte differ only by the
  tokens-per-byte of the validation text and ln 2). The statistic is Student's t with n-1
  degrees of freedom on the per-seed val_loss: t = (baseline - gain - mean) / (sd / sqrt(n)).
Pure: numbers in, verdicts out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SIZE_CAP = 16_000_000
MIN_SEEDS = 3
MIN_GAIN_NATS = 0.005
ALPHA = 0.01


@dataclass(frozen=True)
class SeedRun:
    """One seed's result as the rules need it."""

    seed: int
    val_bpb: float
    val_loss: float
    artifact_bytes: int
    budget_s: float
    hw: str
    trusted: bool  # own or pinned key, not an imported claim


@dataclass(frozen=True)
class Rule:
    name: str
    ok: bool
    detail: str  # the numbers, or the missing evidence


@dataclass(frozen=True)
class Significance:
    n: int
    mean_loss: float
    sd_loss: float
    baseline_bpb: float
    baseline_loss: float
    gain_nats: float
    t: float
    p: float


def check_submission(runs: Sequence[SeedRun], *, hw: str, hw_label: str, budget_s: float, baseline_bpb: float | None,
                     size_cap: int = SIZE_CAP, min_seeds: int = MIN_SEEDS, min_gain_nats: float = MIN_GAIN_NATS,
                     alpha: float = ALPHA) -> tuple[list[Rule], Significance | None]:  # fmt: skip
    """The verdict on each rule for the seeds in `runs` (one run per seed: the caller picks)."""
    counted = [r for r in runs if r.trusted and r.hw == hw]
    rules: list[Rule] = []
    if not counted:
        missing = f"no seed on {hw_label} from own or pinned keys to check"
        rules += [Rule("size", False, missing), Rule("budget", False, missing)]
    else:
        rules += _size_and_budget(counted, size_cap, budget_s)
    seeds = sorted({r.seed for r in counted})
    others = len({r.seed for r in runs} - set(seeds))
    detail = f"{len(seeds)} of {min_seeds} seeds on {hw_label} from own or pinned keys"
    if others:
        detail += f" ({others} more elsewhere: other hardware or imported claims, which do not count)"
    rules.append(Rule("seeds", len(seeds) >= min_seeds, detail))
    if baseline_bpb is None:
        rules.append(Rule("significance", False, "no baseline: give --against BPB or import the track's records"))
        return rules, None
    if len(counted) < 2:
        rules.append(Rule("significance", False, f"needs at least 2 seeds on {hw_label} for a t-test; have {len(counted)}"))
        return rules, None
    sig = significance(counted, baseline_bpb, min_gain_nats)
    ok = sig.p < alpha
    rules.append(Rule("significance", ok, f"mean val_loss {sig.mean_loss:.5f} ± {sig.sd_loss:.5f} (n={sig.n}) vs baseline {sig.baseline_loss:.5f} nats ({baseline_bpb:.5f} bpb): gain {sig.gain_nats:.5f} nats, needed {min_gain_nats} at p < {alpha}; t={sig.t:.3f}, p={sig.p:.3g}"))
    return rules, sig


def _size_and_budget(counted: Sequence[SeedRun], size_cap: int, budget_s: float) -> list[Rule]:
    worst = max(r.artifact_bytes for r in counted)
    over = [r.seed for r in counted if r.artifact_bytes > size_cap]
    slow = [r.seed for r in counted if r.budget_s > budget_s + 1e-9]
    return [
        Rule("size", not over, f"largest artifact+code {worst:,} of {size_cap:,} bytes" + (f"; over the cap: seeds {over}" if over else "")),
        Rule("budget", not slow, f"trained within {budget_s:g} s" if not slow else f"seeds {slow} trained under a budget above {budget_s:g} s"),
    ]


def significance(runs: Sequence[SeedRun], baseline_bpb: float, min_gain_nats: float = MIN_GAIN_NATS) -> Significance:
    """The one-sided t-test of the module doc on `runs` (at least 2)."""
    n = len(runs)
    losses = [r.val_loss for r in runs]
    mean = sum(losses) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / (n - 1))
    ratio = sum(r.val_loss / r.val_bpb for r in runs) / n  # nats per bpb on this tokenizer
    baseline_loss = baseline_bpb * ratio
    margin = baseline_loss - min_gain_nats - mean
    if sd == 0.0:
        t = math.inf if margin > 0 else -math.inf
        p = 0.0 if margin > 0 else 1.0
    else:
        t = margin / (sd / math.sqrt(n))
        p = 1.0 - student_t_cdf(t, n - 1)
    return Significance(n, mean, sd, baseline_bpb, baseline_loss, baseline_loss - mean, t, p)


def student_t_cdf(t: float, dof: int) -> float:
    """P(T <= t) for Student's t with `dof` degrees of freedom (via the regularized incomplete beta)."""
    x = dof / (dof + t * t)
    tail = 0.5 * _betainc(dof / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return math.exp(log_front) * h / a

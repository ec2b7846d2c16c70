"""Learning-rate and momentum schedules, free of any tensor library (torch and MLX share them).

What it guarantees:
- `lr_scale` is a multiplier in [min_lr_frac, 1] of each optimiser group's peak LR: a linear
  warm-up over the first `warmup_steps` steps, then the peak, then a linear warmdown over the
  last `warmdown_frac` of the *wall-clock* budget down to `min_lr_frac` of the peak. Because the
  warmdown is placed in time, not in steps, a slow machine that manages few steps still trains
  at the peak for the first (1 - warmdown_frac) of its budget; it never decays from step 1.
- `warmdown_steps` > 0 adds the reference train_gpt.py's warm-down: the last N steps, timed at
  the run's mean step time so far (elapsed / steps), so the warm-down lasts N * mean step time.
  When both are set, the longer warm-down applies. With `warmdown_frac=0` and `min_lr_frac=0`
  the multiplier is the reference's `lr_mul` exactly (a machine too slow for N steps in its
  budget therefore decays from its first steps, as the reference script would).
- `muon_momentum` ramps linearly from its start value to its final value over its warm-up steps.
- `weight_decay_scale` multiplies Muon's weight decay: 1 until `wd_taper_from_frac` of the
  budget, then linearly down to `wd_taper_final_mult` at its end (the records' late taper: high
  decay keeps weights compressible early, less of it optimises better once they have settled).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Schedule", "lr_scale", "muon_momentum", "weight_decay_scale"]


def lr_scale(
    step: int,
    elapsed_s: float,
    budget_s: float,
    *,
    warmup_steps: int = 0,
    warmdown_frac: float = 0.0,
    warmdown_steps: int = 0,
    min_lr_frac: float = 0.0,
) -> float:
    """LR multiplier for the step about to run, `elapsed_s` seconds of training into `budget_s`."""
    if budget_s <= 0:
        raise ValueError(f"budget_s must be positive, got {budget_s}")
    warm = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    warmdown_s = warmdown_frac * budget_s
    if warmdown_steps > 0:
        warmdown_s = max(warmdown_s, warmdown_steps * elapsed_s / max(step, 1))
    remaining_s = max(budget_s - elapsed_s, 0.0)
    if warmdown_s <= 0 or remaining_s >= warmdown_s:
        decay = 1.0
    else:
        decay = min_lr_frac + (1.0 - min_lr_frac) * remaining_s / warmdown_s
    return warm * decay


def weight_decay_scale(elapsed_s: float, budget_s: float, *, taper_from_frac: float = 1.0, final_mult: float = 1.0) -> float:
    """Multiplier of Muon's weight decay `elapsed_s` seconds into a `budget_s` run."""
    start = taper_from_frac * budget_s
    if taper_from_frac >= 1.0 or elapsed_s <= start:
        return 1.0
    frac = min((elapsed_s - start) / (budget_s - start), 1.0)
    return 1.0 + (final_mult - 1.0) * frac


def muon_momentum(step: int, *, start: float, end: float, warmup_steps: int) -> float:
    """Muon momentum for `step`: `start` at step 0, `end` from step `warmup_steps` on."""
    if warmup_steps <= 0:
        return end
    frac = min(step / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end


@dataclass(frozen=True)
class Schedule:
    """The schedule knobs of one run, bound to its budget."""

    budget_s: float
    warmup_steps: int
    warmdown_frac: float
    warmdown_steps: int
    min_lr_frac: float
    momentum_start: float
    momentum_end: float
    momentum_warmup_steps: int
    wd_taper_from_frac: float = 1.0
    wd_taper_final_mult: float = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], budget_s: float) -> "Schedule":
        return cls(
            budget_s=float(budget_s),
            warmup_steps=config["warmup_steps"],
            warmdown_frac=config["warmdown_frac"],
            warmdown_steps=config["warmdown_steps"],
            min_lr_frac=config["min_lr_frac"],
            momentum_start=config["muon_momentum_warmup_start"],
            momentum_end=config["muon_momentum"],
            momentum_warmup_steps=config["muon_momentum_warmup_steps"],
            wd_taper_from_frac=config["wd_taper_from_frac"],
            wd_taper_final_mult=config["wd_taper_final_mult"],
        )

    def lr(self, step: int, elapsed_s: float) -> float:
        return lr_scale(
            step,
            elapsed_s,
            self.budget_s,
            warmup_steps=self.warmup_steps,
            warmdown_frac=self.warmdown_frac,
            warmdown_steps=self.warmdown_steps,
            min_lr_frac=self.min_lr_frac,
        )

    def weight_decay(self, elapsed_s: float) -> float:
        """The multiplier of Muon's weight decay at `elapsed_s`."""
        return weight_decay_scale(elapsed_s, self.budget_s, taper_from_frac=self.wd_taper_from_frac, final_mult=self.wd_taper_final_mult)

    def momentum(self, step: int) -> float:
        return muon_momentum(step, start=self.momentum_start, end=self.momentum_end, warmup_steps=self.momentum_warmup_steps)

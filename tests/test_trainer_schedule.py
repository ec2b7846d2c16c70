"""The LR schedule lives in wall-clock time: slow hardware keeps its peak LR, warm-up is in steps."""

from __future__ import annotations

import pytest

from p2pgolf.protocol import knobs
from p2pgolf.trainer.schedule import Schedule, lr_scale, muon_momentum


def _simulate(seconds_per_step: float, budget_s: float, **kw) -> list[float]:
    """LR scale of every step a machine taking `seconds_per_step` runs within the budget."""
    scales, step, elapsed = [], 0, 0.0
    while elapsed + seconds_per_step <= budget_s:
        scales.append(lr_scale(step, elapsed, budget_s, **kw))
        step += 1
        elapsed += seconds_per_step
    return scales


def test_one_second_steps_keep_peak_lr_for_the_configured_fraction_of_a_600s_budget():
    scales = _simulate(1.0, 600.0, warmdown_frac=0.2, min_lr_frac=0.0)
    assert len(scales) == 600
    # The first 80% of the budget (480 steps of 1 s) run at the peak; the warmdown follows.
    assert all(s == 1.0 for s in scales[:481])
    assert all(s < 1.0 for s in scales[481:])
    assert scales[540] == pytest.approx(0.5, abs=1e-9)  # halfway through the warmdown
    assert all(a >= b for a, b in zip(scales, scales[1:]))


def test_slow_hardware_never_decays_from_the_first_step():
    # 60 s per step: only 10 steps in 600 s; the first 8 still train at the peak.
    scales = _simulate(60.0, 600.0, warmdown_frac=0.2)
    assert scales[:9] == [1.0] * 9
    assert scales[9] < 1.0


def test_warmdown_ends_at_the_min_lr_floor_not_below():
    assert lr_scale(10, 600.0, 600.0, warmdown_frac=0.5, min_lr_frac=0.1) == pytest.approx(0.1)
    assert lr_scale(10, 10_000.0, 600.0, warmdown_frac=0.5, min_lr_frac=0.1) == pytest.approx(0.1)
    assert lr_scale(10, 450.0, 600.0, warmdown_frac=0.5, min_lr_frac=0.1) == pytest.approx(0.1 + 0.9 * 0.5)


def test_warmup_is_linear_in_steps_and_reaches_the_peak():
    got = [lr_scale(s, 0.0, 600.0, warmup_steps=4) for s in range(6)]
    assert got == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_zero_warmdown_fraction_keeps_the_peak_to_the_end():
    assert lr_scale(100, 599.9, 600.0, warmdown_frac=0.0) == 1.0


def test_muon_momentum_ramps_from_start_to_end_over_its_warmup():
    assert muon_momentum(0, start=0.85, end=0.95, warmup_steps=500) == pytest.approx(0.85)
    assert muon_momentum(250, start=0.85, end=0.95, warmup_steps=500) == pytest.approx(0.90)
    assert muon_momentum(10_000, start=0.85, end=0.95, warmup_steps=500) == pytest.approx(0.95)
    assert muon_momentum(0, start=0.85, end=0.95, warmup_steps=0) == pytest.approx(0.95)


def test_schedule_reads_its_knobs_from_a_resolved_config():
    config = knobs.resolve("cpu-small", {"warmdown_frac": 0.5, "min_lr_frac": 0.2, "warmup_steps": 2})
    schedule = Schedule.from_config(config, 100.0)
    assert schedule.lr(0, 0.0) == pytest.approx(0.5)
    assert schedule.lr(5, 75.0) == pytest.approx(0.2 + 0.8 * 0.5)
    assert schedule.momentum(0) == pytest.approx(config["muon_momentum_warmup_start"])


def _reference_lr_mul(step: int, elapsed_ms: float, warmdown_iters: int, max_wallclock_ms: float) -> float:
    """The reference train_gpt.py's wall-clock warm-down, written down from its rule: the last
    `warmdown_iters` steps at the mean step time so far, linear to zero."""
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = warmdown_iters * step_ms
    remaining_ms = max(max_wallclock_ms - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


@pytest.mark.parametrize("step_s", [0.0435, 0.2, 1.7])  # an H100's 43.5 ms, a slower GPU, a CPU
def test_warmdown_steps_is_the_reference_warmdown_at_every_step(step_s):
    config = knobs.resolve("naive-baseline", {})
    schedule = Schedule.from_config(config, 600.0)
    step, elapsed, checked, decayed = 0, 0.0, 0, 0
    while elapsed < 600.0:
        want = _reference_lr_mul(step, elapsed * 1000.0, 1200, 600_000.0)
        assert schedule.lr(step, elapsed) == pytest.approx(want, rel=1e-9, abs=1e-12), (step, elapsed)
        decayed += want < 1.0
        checked += 1
        step, elapsed = step + 1, elapsed + step_s
    assert checked > 300 and decayed > 0
    if step_s * 1200 > 600.0:  # too slow for 1,200 steps: the reference decays from its first steps
        assert schedule.lr(2, 2 * step_s) < 1.0


def test_the_longer_of_the_two_warmdowns_applies():
    # 1 s steps, 600 s: warmdown_frac 0.2 is 120 s, 60 steps are 60 s; the fraction wins, and
    # 300 steps (300 s) win over it.
    assert lr_scale(500, 500.0, 600.0, warmdown_frac=0.2, warmdown_steps=60) == pytest.approx(100 / 120)
    assert lr_scale(400, 400.0, 600.0, warmdown_frac=0.2, warmdown_steps=300) == pytest.approx(200 / 300)
    assert lr_scale(400, 400.0, 600.0, warmdown_frac=0.2, warmdown_steps=0) == 1.0


def test_the_weight_decay_taper_starts_at_its_fraction_and_ends_at_its_multiplier():
    from p2pgolf.trainer.schedule import weight_decay_scale

    got = [weight_decay_scale(t, 100.0, taper_from_frac=0.7, final_mult=0.5) for t in (0.0, 70.0, 85.0, 100.0, 120.0)]
    assert got == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.5])
    assert weight_decay_scale(99.0, 100.0) == 1.0  # no taper by default
    config = knobs.resolve("cpu-small", {"wd_taper_from_frac": 0.5, "wd_taper_final_mult": 0.0})
    assert Schedule.from_config(config, 10.0).weight_decay(7.5) == pytest.approx(0.5)


def test_a_non_positive_budget_is_refused():
    with pytest.raises(ValueError, match="budget_s"):
        lr_scale(0, 0.0, 0.0)

"""Will one optimiser step fit the budget? Estimates before a run starts, and the default base.

A step costs about `train_batch_tokens * training_flops_per_token(config)` operations
(protocol.knobs). The rate this machine trains at comes from its own history (the fastest of its
earlier undegraded runs on the same hardware class, trainer.run_history) or, without history,
from TYPICAL_FLOPS_PER_S, a modest figure for the kind of device (small models in eager float32
on a CPU reach a few GFLOP/s per core; a GPU in bf16 tens of TFLOP/s).

Guarantees:
- `check_step_fits` raises BudgetError (one line naming train_batch_tokens, the model-size knobs
  and a smaller base, with the estimate) only when a step would not fit the budget even at
  OPTIMISM times the expected rate, so a config that can run is not refused on a guess; the
  trainer checks again after its first measured micro-batch (trainer.train_torch).
- `default_base` picks, for a benchmark and this hardware, the largest built-in base whose
  expected step fits the budget at least MIN_STEPS times (the naive baseline on a GPU for the
  challenge, `cpu-small` on a CPU; `smoke-tiny` for the smoke benchmark, whatever the hardware).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pgolf.protocol import knobs
from p2pgolf.protocol.benchmarks import Benchmark
from p2pgolf.protocol.records import HardwareClass
from p2pgolf.trainer.run_history import PastRun

__all__ = [
    "BudgetError",
    "StepEstimate",
    "TYPICAL_FLOPS_PER_S",
    "OPTIMISM",
    "MIN_STEPS",
    "estimate_step",
    "check_step_fits",
    "default_base",
    "step_too_long_message",
]

# Training FLOP/s per device of the kind, as small models reach it in p2pgolf's trainer.
TYPICAL_FLOPS_PER_S = {"cpu": 3e9, "mps": 1e12, "cuda": 5e13}  # cpu: per usable core
OPTIMISM = 10.0  # refuse only what would not fit even at this many times the expected rate
MIN_STEPS = 100  # a default base must fit its step into the budget at least this many times
MIN_SUGGESTED_STEPS = 10  # a suggested smaller train_batch_tokens fits at least this many
_BIGGEST_FIRST = ("naive-baseline", "cpu-small")
_SMOKE_BASE = "smoke-tiny"


class BudgetError(ValueError):
    """One training step of the config cannot fit the run's budget; the message says what to change."""


@dataclass(frozen=True)
class StepEstimate:
    """How long one optimiser step of a config takes on a hardware class."""

    step_tokens: int
    flops: float
    flops_per_s: float  # the expected rate
    seconds: float  # at the expected rate
    source: str  # where the rate comes from, for the message

    @property
    def seconds_at_best(self) -> float:
        return self.seconds / OPTIMISM


def estimate_step(config: Mapping[str, Any], hw: HardwareClass, history: Sequence[PastRun] = ()) -> StepEstimate:
    """The expected time of one optimiser step of resolved `config` on `hw`."""
    rate, source = _rate(hw, history)
    tokens = config["train_batch_tokens"]
    flops = float(tokens) * knobs.training_flops_per_token(config)
    return StepEstimate(step_tokens=tokens, flops=flops, flops_per_s=rate, seconds=flops / rate, source=source)


def check_step_fits(config: Mapping[str, Any], budget_s: float, hw: HardwareClass, history: Sequence[PastRun] = (), *, base: str = "") -> StepEstimate:
    """The estimate, or BudgetError when even an optimistic step would overrun `budget_s`."""
    est = estimate_step(config, hw, history)
    if est.seconds_at_best > budget_s:
        raise BudgetError(step_too_long_message(config, budget_s, est.seconds, f"on {hw.key} (at {est.source})", base=base))
    return est


def step_too_long_message(config: Mapping[str, Any], budget_s: float, step_s: float, how: str, *, base: str = "") -> str:
    """The one-line refusal: the estimate and every knob that shortens a step."""
    tokens = config["train_batch_tokens"]
    fitting = _fitting_batch(config, budget_s, step_s)
    smaller = [b for b in ("cpu-small", "smoke-tiny") if b != base]
    if fitting:
        change = (
            f"make the step smaller (e.g. --set train_batch_tokens={fitting}), or the model "
            f"(num_layers, model_dim, mlp_mult, train_seq_len)"
        )
    else:  # not even one sequence per step would fit many times: only a smaller model helps
        change = (
            f"make the model smaller (num_layers, model_dim, mlp_mult, train_seq_len): even one sequence "
            f"of train_seq_len={config['train_seq_len']} per step (train_batch_tokens) would not fit it {MIN_SUGGESTED_STEPS} times"
        )
    return (
        f"one optimiser step of {tokens:,} tokens (train_batch_tokens) takes about {_duration(step_s)} {how}, "
        f"more than the {budget_s:g}s budget: {change}, or start from a smaller base (--base {' / '.join(smaller)}); "
        f"grad_accum_steps only splits a step into micro-batches, it does not shorten it"
    )


def default_base(bench: Benchmark, hw: HardwareClass, budget_s: float | None = None, history: Sequence[PastRun] = ()) -> str:
    """The built-in base a run on `bench` starts from when none is named (module docstring)."""
    if bench.task == "smoke-bytes":
        return _SMOKE_BASE
    budget = bench.budget_s if budget_s is None else budget_s
    for name in _BIGGEST_FIRST:
        if estimate_step(knobs.base_config(name), hw, history).seconds * MIN_STEPS <= budget:
            return name
    return _BIGGEST_FIRST[-1]


def _rate(hw: HardwareClass, history: Sequence[PastRun]) -> tuple[float, str]:
    seen = [p.flops_per_s for p in history if p.hw_key == hw.key and not p.degraded]
    if seen:
        return max(seen), f"{max(seen) / 1e9:,.1f} GFLOP/s, the fastest of this node's {len(seen)} earlier run(s) on it"
    per_device = TYPICAL_FLOPS_PER_S.get(hw.accel, TYPICAL_FLOPS_PER_S["cpu"])
    rate = per_device * max(1, hw.count)
    return rate, f"{rate / 1e9:,.0f} GFLOP/s, typical for {hw.count} {hw.accel} device{'s' if hw.count != 1 else ''} before this node has history"


def _fitting_batch(config: Mapping[str, Any], budget_s: float, step_s: float) -> int | None:
    """A power-of-two train_batch_tokens (whole sequences) whose step fits the budget MIN_STEPS
    times, else MIN_SUGGESTED_STEPS times; None when not even one sequence per step would."""
    seq = config["train_seq_len"]
    per_token_s = step_s / config["train_batch_tokens"]
    if per_token_s <= 0:
        return None
    for steps in (MIN_STEPS, MIN_SUGGESTED_STEPS):
        affordable = int(budget_s / steps / per_token_s)
        tokens = 1 << (affordable.bit_length() - 1) if affordable > 0 else 0
        if tokens >= max(seq, 256):
            return tokens - tokens % seq
    return None  # not even one sequence fits: the model must shrink


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_hardware(backend: str, device: str) -> HardwareClass:
    """The hardware class a run with this (resolved) backend and device setting trains on."""
    from p2pgolf.trainer.backend import is_apple_silicon
    from p2pgolf.trainer.hardware import HardwareError, detect_hardware

    if device != "auto":
        accel = device
    elif backend == "mlx":
        accel = "mps" if is_apple_silicon() else "cpu"
    else:
        best = detect_hardware()
        accel = "cuda" if best.accel == "cuda" else "cpu"  # torch's auto device: CUDA, else the CPU
    try:
        return detect_hardware(accel)
    except HardwareError:
        return detect_hardware("cpu")


def check_run_fits(run: Any, history: Sequence[PastRun] = ()) -> StepEstimate:
    """`check_step_fits` for a trainer.config.RunConfig on the hardware it will train on."""
    hw = run_hardware(run.backend, run.device)
    return check_step_fits(run.knobs, run.budget_s, hw, history, base=run.base)

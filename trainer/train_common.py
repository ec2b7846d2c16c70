"""What every backend's training loop shares: the result types and the batch plan.

No tensor library here. Guarantees:
- `plan_batch` splits a step's `train_batch_tokens` into devices, micro-batches and whole
  sequences the same way on every backend: a positive `grad_accum_steps` is used as given (it
  must divide the step's sequences, else ProtocolError naming the knob), 0 asks
  `trainer.memory.choose_grad_accum` for the fewest micro-batches that fit the memory.
- `TrainResult` and `StepReport` are what `train` returns and reports, whichever backend ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from p2pgolf.trainer.memory import DEFAULT_MEMORY_FRACTION, choose_grad_accum, machine_memory_bytes

__all__ = ["BatchPlan", "StepReport", "TokenSource", "TrainResult", "looping_at", "plan_batch", "swa_collects"]


class TokenSource(Protocol):
    """A deterministic stream of training tokens: `take(n)` returns the next n ids (uint16)."""

    def take(self, n: int) -> np.ndarray: ...


@dataclass(frozen=True)
class StepReport:
    """A progress snapshot, handed to the `progress` callback."""

    step: int
    train_loss: float
    elapsed_s: float
    budget_s: float
    tokens: int
    lr_scale: float
    micro: int = 0  # inside a long step: micro-batches done of `micros` (0: the step is whole)
    micros: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class TrainResult:
    state: dict[str, np.ndarray]  # float32, stable names (see trainer.model_torch)
    steps: int
    train_tokens: int
    training_seconds: float
    final_train_loss: float
    losses: tuple[float, ...]  # train loss of every step
    micro_batch_tokens: int
    grad_accum_steps: int
    params: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchPlan:
    seq_len: int
    grad_accum_steps: int
    seqs_per_micro: int  # per device
    note: str = ""  # how the accumulation was chosen, for the log

    @property
    def micro_tokens(self) -> int:
        return self.seqs_per_micro * self.seq_len

    def step_tokens(self, world_size: int) -> int:
        return self.micro_tokens * self.grad_accum_steps * world_size


def plan_batch(
    config: Mapping[str, Any],
    world_size: int = 1,
    *,
    memory_bytes: int | None = None,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    activation_bytes: int = 4,
    attention_scores: bool = True,
) -> BatchPlan:
    """The step's split into micro-batches on each of `world_size` devices.

    `memory_bytes` is one device's memory (default: this machine's); see trainer.memory for
    `activation_bytes` and `attention_scores`. The global batch is kept, rounded down to whole
    sequences per device.
    """
    if config["grad_accum_steps"] == 0 and not memory_bytes:
        memory_bytes = machine_memory_bytes() or 16 << 30  # a system that does not say: assume 16 GiB
    choice = choose_grad_accum(
        config,
        memory_bytes,
        fraction=memory_fraction,
        world=world_size,
        activation_bytes=activation_bytes,
        attention_scores=attention_scores,
    )
    return BatchPlan(
        seq_len=config["train_seq_len"],
        grad_accum_steps=choice.grad_accum_steps,
        seqs_per_micro=choice.micro_batch_sequences,
        note=choice.describe(),
    )


def swa_collects(config: Mapping[str, Any], steps_done: int, lr_mult: float) -> bool:
    """Whether the weights after step number `steps_done` (trained at LR multiplier `lr_mult`)
    are an SWA snapshot: every `swa_every` steps while the multiplier is below
    `swa_start_lr_scale`. The final weights are the snapshots' mean when there are two or more."""
    every = config["swa_every"]
    return every > 0 and lr_mult < config["swa_start_lr_scale"] and steps_done % every == 0


def looping_at(config: Mapping[str, Any], elapsed_s: float, budget_s: float) -> bool:
    """Whether a step `elapsed_s` seconds into a `budget_s` run trains with the looped middle
    segment (`num_loops`): from `loop_from_frac` of the budget on (from the first step at 0)."""
    return bool(config["num_loops"]) and elapsed_s >= config["loop_from_frac"] * budget_s

"""Memory-aware micro-batching: how many micro-batches a step needs so training fits in memory.

Backend-free (no tensor library), shared by MLX and torch. The knob `grad_accum_steps` is the
number of micro-batches per optimiser step: 0 asks `choose_grad_accum` to pick the fewest that
fit a stated fraction of the machine's memory; a positive value is used as given (checked).

The estimate (`estimate_training_memory`), in bytes:
- static: parameters, their gradients, the gradient accumulator and the optimiser's two moments
  (an upper bound: Muon keeps one), all float32, plus the EMA copy when `ema_decay` > 0;
  that is 4 * params * (5, or 6 with EMA).
- per sequence of `train_seq_len` tokens, what the backward pass keeps per token:
  each layer application keeps about 10*dim + 4*kv_dim + 3*hidden values (5*hidden for swiglu),
  plus 4*heads*seq_len for the attention matrices (scores, masked scores, probabilities and
  their gradient) when the backend materialises them (MLX does; torch's fused attention on
  CUDA does not); the head keeps 8*vocab float32 values (logits, the soft cap's intermediates,
  the softmax and their gradients) and the embedding 2*dim.
It errs on the high side (a test checks it against MLX's measured peak); `DEFAULT_MEMORY_FRACTION` of memory leaves room for the operating
system, other programs, the allocator's cache and transient buffers. On a Mac the GPU shares
the machine's memory, so the fraction is of the whole memory.

Micro-batches split a step's sequences evenly (the chosen count divides the number of
sequences per step), so the averaged gradient is exactly that of the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.knobs import estimate_parameters, mlp_hidden_size
from p2pgolf.trainer.plan_refused import MEMORY, PlanRefused

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "AccumChoice",
    "MemoryEstimate",
    "MemoryBudgetError",
    "choose_grad_accum",
    "estimate_training_memory",
    "machine_memory_bytes",
    "sequences_per_step",
]

DEFAULT_MEMORY_FRACTION = 0.6
GIB = 1 << 30


class MemoryBudgetError(PlanRefused):
    """Even one sequence per micro-batch would not fit the memory budget."""

    def __init__(self, message: str):
        super().__init__(MEMORY, "train_seq_len", message)


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of a config: a fixed part plus a part per sequence in a micro-batch."""

    parameters: int
    static_bytes: int
    per_sequence_bytes: int

    def total_bytes(self, sequences: int) -> int:
        """Estimated peak bytes with `sequences` sequences per micro-batch."""
        return self.static_bytes + sequences * self.per_sequence_bytes


@dataclass(frozen=True)
class AccumChoice:
    """Micro-batching of one optimiser step on one device."""

    grad_accum_steps: int
    micro_batch_sequences: int
    estimated_bytes: int
    budget_bytes: int  # 0 when the knob fixed the choice and no memory size was given
    automatic: bool

    def describe(self) -> str:
        how = "chosen from memory" if self.automatic else "set by grad_accum_steps"
        budget = f" of a {self.budget_bytes / GIB:.1f} GiB budget" if self.budget_bytes else ""
        return (
            f"{self.grad_accum_steps} micro-batches of {self.micro_batch_sequences} sequences "
            f"({how}; about {self.estimated_bytes / GIB:.2f} GiB{budget})"
        )


def sequences_per_step(config: Mapping[str, Any], world: int = 1) -> int:
    """Sequences of `train_seq_len` one device trains on per optimiser step."""
    seqs = config["train_batch_tokens"] // (config["train_seq_len"] * world)
    if seqs < 1:
        raise ProtocolError(
            f"train_batch_tokens={config['train_batch_tokens']} gives no whole sequence of "
            f"train_seq_len={config['train_seq_len']} to each of {world} devices"
        )
    return seqs


def estimate_training_memory(
    config: Mapping[str, Any],
    *,
    activation_bytes: int = 4,
    attention_scores: bool = True,
) -> MemoryEstimate:
    """The estimate described in the module docstring, for a resolved knob config.

    `activation_bytes`: 4 for float32 activations, 2 for bfloat16; `attention_scores`: whether
    the backend keeps the seq_len x seq_len attention matrices for the backward pass.
    """
    dim = config["model_dim"]
    heads = config["num_heads"]
    kv_dim = dim // heads * config["num_kv_heads"]
    hidden = mlp_hidden_size(config)
    seq_len = config["train_seq_len"]
    params = estimate_parameters(config) + _control_parameters(config)
    copies = 5 + (1 if config["ema_decay"] > 0 else 0)
    static = 4 * params * copies
    layer = 10 * dim + 4 * kv_dim + (5 if config["activation"] == "swiglu" else 3) * hidden
    if attention_scores:
        layer += 4 * heads * seq_len
    per_token = _depth(config) * layer * activation_bytes + 8 * config["vocab_size"] * 4 + 2 * dim * activation_bytes
    return MemoryEstimate(parameters=params, static_bytes=static, per_sequence_bytes=per_token * seq_len)


def choose_grad_accum(
    config: Mapping[str, Any],
    memory_bytes: int | None,
    *,
    fraction: float = DEFAULT_MEMORY_FRACTION,
    world: int = 1,
    activation_bytes: int = 4,
    attention_scores: bool = True,
) -> AccumChoice:
    """Micro-batches per step: the knob's value if positive, else the fewest that fit.

    Auto picks the smallest divisor of the step's sequence count whose micro-batch fits in
    `fraction * memory_bytes`. Raises ProtocolError (naming grad_accum_steps) for a knob value
    that does not divide the step's sequences, and MemoryBudgetError when nothing fits.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"memory fraction {fraction} must be in (0, 1]")
    seqs = sequences_per_step(config, world)
    estimate = estimate_training_memory(config, activation_bytes=activation_bytes, attention_scores=attention_scores)
    budget = int(fraction * memory_bytes) if memory_bytes else 0
    fixed = config["grad_accum_steps"]
    if fixed:
        if seqs % fixed:
            raise ProtocolError(
                f"grad_accum_steps={fixed} must divide the {seqs} sequences of a step "
                f"(train_batch_tokens / train_seq_len{' / devices' if world > 1 else ''})",
                "knob grad_accum_steps",
            )
        micro = seqs // fixed
        return AccumChoice(fixed, micro, estimate.total_bytes(micro), budget, automatic=False)
    if not memory_bytes or memory_bytes <= 0:
        raise ValueError("grad_accum_steps=0 (auto) needs the machine's memory size")
    for accum in _divisors(seqs):
        micro = seqs // accum
        need = estimate.total_bytes(micro)
        if need <= budget:
            return AccumChoice(accum, micro, need, budget, automatic=True)
    raise MemoryBudgetError(
        f"this config needs about {estimate.total_bytes(1) / GIB:.2f} GiB even with one sequence per micro-batch, "
        f"more than {fraction:.0%} of {memory_bytes / GIB:.1f} GiB; make the model or train_seq_len smaller"
    )


def machine_memory_bytes() -> int:
    """Physical memory of this machine (Linux and macOS), or 0 if the system does not say."""
    import os

    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 0


def _depth(config: Mapping[str, Any]) -> int:
    """Block applications per forward pass: the layers, plus the looped segment's extra passes."""
    segment = config["loop_end"] - config["loop_start"] + 1 if config["num_loops"] else 0
    return config["num_layers"] + config["num_loops"] * segment


def _control_parameters(config: Mapping[str, Any]) -> int:
    # Gains and mixes: resid_mix (2*dim), attn_scale, mlp_scale (dim each), q_gain (heads), skips.
    dim = config["model_dim"]
    blocks = config["unique_blocks"] or config["num_layers"]
    depth = _depth(config)
    skips = min(depth // 2, depth - depth // 2)
    return blocks * (4 * dim + config["num_heads"]) + skips * dim


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))

"""What a run will cost, checked before it starts: parameters, evaluation work, memory.

A record from a peer may name any config the knob ranges allow; some of those cannot run here
(a fixed `grad_accum_steps=1` with `train_batch_tokens=2^24` asks for one micro-batch of 16,384
sequences; `eval_stride=1` re-reads every validation token `eval_seq_len` times). Such a config
is refused here, before any process starts, with `PlanRefused` naming the knob to change,
instead of failing after minutes of training (or never finishing).

- Parameters (`check_config_cost`, machine-independent): the artifact stores every unique
  weight matrix at `quant_bits` bits; compression never halves packed quantised weights, so
  a config with more than `MIN_COMPRESSION * 8 * size_cap / quant_bits` parameters cannot fit
  the benchmark's size cap (32 M for 16 MB at 8 bits). Refused, naming the size knob the config
  changes.
- Evaluation work (same function): sliding windows of `eval_seq_len` moved by `eval_stride`
  read every validation token about `eval_seq_len / eval_stride` times; at most
  MAX_EVAL_OVERLAP. So `eval_stride >= ceil(eval_seq_len / MAX_EVAL_OVERLAP)`, or 0
  (non-overlapping windows). The evaluation plans one window per `eval_stride` tokens, so a
  sliding stride is also at least MIN_SLIDING_STRIDE (short windows at stride 1 would be one
  window per validation token: tens of millions).
- Memory (`check_memory`, given a device budget): training as trainer/memory.py estimates it,
  for the micro-batching a fixed `grad_accum_steps` imposes (or the best automatic one), and
  evaluation (the resident training state plus one batch of windows of `eval_seq_len`; its
  logits grow with `vocab_size`). Budget: DEFAULT_MEMORY_FRACTION of
  one device's memory.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pgolf.protocol.knobs import estimate_parameters, mlp_hidden_size
from p2pgolf.trainer.memory import DEFAULT_MEMORY_FRACTION, GIB, estimate_training_memory, machine_memory_bytes, sequences_per_step
from p2pgolf.trainer.plan_refused import EVAL_WORK, MEMORY, PARAMETERS, PlanRefused

__all__ = ["DeviceBudget", "MAX_EVAL_OVERLAP", "check_config_cost", "check_memory", "device_budget", "estimate_eval_memory"]

MAX_EVAL_OVERLAP = 64  # the challenge's strongest entries evaluate 2048-token windows at stride 64: 32
MIN_SLIDING_STRIDE = 16  # windows per validation token at most 1/16 (~3.9 M windows on 62 M tokens)
MIN_COMPRESSION = 2.0  # compressed artifact bytes >= packed quantised bytes / this
# Knobs that set the parameter count, in the order a refusal names them.
SIZE_KNOBS = ("num_layers", "unique_blocks", "model_dim", "mlp_mult", "mlp_hidden", "vocab_size", "tie_embeddings", "num_kv_heads", "activation", "quant_bits")


@dataclass(frozen=True)
class DeviceBudget:
    """One device as the trainer will use it: its memory and how the backend spends it."""

    memory_bytes: int
    activation_bytes: int  # 2 for bfloat16 activations, 4 for float32
    attention_scores: bool  # whether seq_len x seq_len attention matrices are materialised
    eval_batch_tokens: int  # tokens of windows evaluated together (trainer/run_torch.py, run_mlx.py)
    world: int = 1  # devices a step is split over
    fraction: float = DEFAULT_MEMORY_FRACTION

    @property
    def budget_bytes(self) -> int:
        return int(self.fraction * self.memory_bytes)

    def describe(self) -> str:
        return f"{self.fraction:.0%} of {self.memory_bytes / GIB:.1f} GiB"


def check_config_cost(config: Mapping[str, Any], size_cap: int, diff: Mapping[str, Any] = ()) -> None:
    """Refuse (PlanRefused) a config whose parameters cannot fit `size_cap` bytes, or whose
    evaluation re-reads each token more than MAX_EVAL_OVERLAP times. `diff`: the knobs the
    candidate changed, so the refusal names one of them."""
    params = estimate_parameters(config)
    limit = int(MIN_COMPRESSION * 8 * size_cap / config["quant_bits"])
    if params > limit:
        knob = _size_knob(diff)
        raise PlanRefused(
            PARAMETERS, knob,
            f"about {params:,} parameters at quant_bits={config['quant_bits']} cannot fit the benchmark's {size_cap:,}-byte "
            f"artifact cap (at most {limit:,}); make the model smaller ({knob}={config[knob]})",
        )  # fmt: skip
    eval_len = config["eval_seq_len"] or config["train_seq_len"]
    stride = config["eval_stride"]
    floor = max(MIN_SLIDING_STRIDE, -(-eval_len // MAX_EVAL_OVERLAP))
    if 0 < stride < eval_len and stride < floor:
        raise PlanRefused(
            EVAL_WORK, "eval_stride",
            f"eval_stride={stride} reads every validation token about {eval_len // stride} times in windows of {eval_len} "
            f"and plans one window per {stride} tokens; eval_stride >= {floor} (at most {MAX_EVAL_OVERLAP} reads per token, "
            f"at least {MIN_SLIDING_STRIDE} tokens per window), or 0 for non-overlapping windows",
        )  # fmt: skip


def estimate_eval_memory(config: Mapping[str, Any], budget: DeviceBudget) -> int:
    """Peak bytes of evaluation: the training state still resident (weights, gradients and
    optimiser moments: trainer/memory.py's static part) plus one batch of windows of
    `eval_seq_len` (`eval_batch_tokens` of them, at least one window): per token the live
    activations of one layer and the head's float32 logits, log-probabilities and losses.
    Inference attention is fused on every backend (torch's and MLX's scaled_dot_product_attention),
    so no seq_len x seq_len matrix is counted."""
    seq_len = config["eval_seq_len"] or config["train_seq_len"]
    windows = max(1, budget.eval_batch_tokens // seq_len)
    dim, heads = config["model_dim"], config["num_heads"]
    kv_dim = dim // heads * config["num_kv_heads"]
    hidden = mlp_hidden_size(config)
    per_token = (4 * dim + 2 * kv_dim + 3 * hidden) * budget.activation_bytes + 3 * config["vocab_size"] * 4
    static = estimate_training_memory(config).static_bytes
    return static + windows * seq_len * per_token


def check_memory(config: Mapping[str, Any], budget: DeviceBudget) -> str:
    """Refuse (PlanRefused, reason "memory") a config whose training or evaluation would not fit
    `budget`; else a one-line description of the plan."""
    estimate = estimate_training_memory(config, activation_bytes=budget.activation_bytes, attention_scores=budget.attention_scores)
    limit = budget.budget_bytes
    seqs = sequences_per_step(config, budget.world)
    seq_len = config["train_seq_len"]
    if estimate.total_bytes(1) > limit:
        if estimate.static_bytes > limit:
            knob = "model_dim"
            why = f"the model's {estimate.parameters:,} parameters with their gradients and optimiser state need about {estimate.static_bytes / GIB:.2f} GiB"
        else:
            knob = "train_seq_len"
            why = f"one sequence of train_seq_len={seq_len} needs about {estimate.total_bytes(1) / GIB:.2f} GiB to train"
        raise PlanRefused(MEMORY, knob, f"{why}, more than {budget.describe()}")
    accum = config["grad_accum_steps"]
    if accum and seqs % accum == 0 and estimate.total_bytes(seqs // accum) > limit:
        fits = next(a for a in _divisors(seqs) if estimate.total_bytes(seqs // a) <= limit)
        raise PlanRefused(
            MEMORY, "grad_accum_steps",
            f"grad_accum_steps={accum} puts {seqs // accum:,} sequences of {seq_len} tokens in each micro-batch "
            f"(train_batch_tokens={config['train_batch_tokens']:,}): about {estimate.total_bytes(seqs // accum) / GIB:.1f} GiB, "
            f"more than {budget.describe()}; grad_accum_steps={fits} fits, 0 chooses from memory",
        )  # fmt: skip
    eval_need = estimate_eval_memory(config, budget)
    if eval_need > limit:
        eval_len = config["eval_seq_len"] or seq_len
        # below the batch, windows of any length make the same tokens per batch: the vocabulary decides
        knob = "eval_seq_len" if eval_len >= budget.eval_batch_tokens else "vocab_size"
        raise PlanRefused(
            MEMORY, knob,
            f"evaluating windows of eval_seq_len={eval_len} with vocab_size={config['vocab_size']} "
            f"needs about {eval_need / GIB:.1f} GiB, more than {budget.describe()}",
        )
    return f"fits {budget.describe()}: training {estimate.total_bytes(1) / GIB:.2f} GiB at one sequence per micro-batch, evaluation {eval_need / GIB:.2f} GiB"


def device_budget(backend: str, device: str) -> DeviceBudget | None:
    """The budget of the device a run of `backend` on `device` will use, found without importing
    a tensor library (nvidia-smi for CUDA, the machine's memory otherwise); None if unknown."""
    if backend == "torch" and device in ("auto", "cuda"):
        gpus = _cuda_gpus()
        if gpus:
            return DeviceBudget(min(m for _, m in gpus) << 20, activation_bytes=2, attention_scores=False, eval_batch_tokens=131072, world=len(gpus))
        if device == "cuda":
            return None
    memory = machine_memory_bytes()
    if not memory:
        return None
    if backend == "mlx":
        # bfloat16 on the GPU, float32 on the CPU: the smaller estimate, so nothing runnable is refused
        return DeviceBudget(memory, activation_bytes=2, attention_scores=True, eval_batch_tokens=65536)
    return DeviceBudget(memory, activation_bytes=4, attention_scores=True, eval_batch_tokens=32768 if device == "mps" else 16384)


@functools.lru_cache(maxsize=1)
def _cuda_gpus() -> tuple[tuple[str, int], ...]:
    import os
    import shutil
    import subprocess

    from p2pgolf.trainer.hardware import gpus_from_nvidia_smi

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(gpus_from_nvidia_smi(out, os.environ.get("CUDA_VISIBLE_DEVICES")))


def _size_knob(diff: Mapping[str, Any]) -> str:
    return next((k for k in SIZE_KNOBS if k in diff), "model_dim")


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))

"""The MLX training loop: one resolved config, a token stream and a wall-clock budget in, the
trained weights (numpy, the shared names) out. The torch loop's twin (trainer/train_torch.py).

What it guarantees:
- The torch backend's rules, from the same shared code: parameter groups and LRs
  (`trainer.model_spec`), the schedule (`trainer.schedule`: warm-up in steps, warmdown over the
  last fraction of the wall-clock budget, min-LR floor, Muon momentum ramp), the batch plan
  (`trainer.train_common.plan_batch`: micro-batches chosen from memory when
  grad_accum_steps = 0), the same token windows in the same order, gradient clipping and EMA
  (the EMA weights are returned when `ema_decay > 0`). Only the model, the optimiser step and
  the tensor work are MLX's (`trainer.model_mlx`, `trainer.optim_mlx`).
- Time: only optimiser steps are on the clock. On the GPU the gradient function is compiled
  (`mx.compile`) and primed on a batch that is not trained on; on the CPU it runs uncompiled,
  since compiling there builds C++ kernels and costs more than it saves (same numbers either way). The budget is kept as torch keeps it on one device: a
  micro-batch starts only if the clock plus the mean micro-batch time stays within the budget
  (a step cut short applies the mean gradient of its micro-batches done), a first step measured
  to need more than twice the budget is refused (trainer.step_budget.BudgetError), long steps
  report progress per micro-batch, and the CPU share is measured (trainer.cpu_share).
- Devices: the Apple GPU (Metal) trains in bfloat16 compute with float32 weights, as torch's
  autocast does on CUDA; the CPU (the `mlx[cpu]` wheel on Linux, which tests use) in float32.
- Deterministic on CPU for a given seed and data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from p2pgolf.trainer.backend import resolve_mlx_device
from p2pgolf.trainer.model_mlx import GPT, build_model, load_state_dict_numpy, state_dict_numpy
from p2pgolf.trainer.optim_mlx import MixedOptimizer
from p2pgolf.trainer.cpu_share import CpuShareMeter
from p2pgolf.trainer.schedule import Schedule
from p2pgolf.trainer.step_budget import BudgetError, step_too_long_message
from p2pgolf.trainer.qat import qat_bits, qat_on, scale_floor
from p2pgolf.trainer.train_common import StepReport, TokenSource, TrainResult, looping_at, plan_batch, swa_collects

__all__ = ["train", "select_device", "compute_dtype_for", "model_from_state"]

_MEASURED_SLACK = 2.0  # refuse a first step measured to need more than this many budgets (as torch)


def select_device(device: str = "auto") -> str:
    """Make MLX use the run's device ("auto", "cpu" or "mps"); returns "gpu" or "cpu"."""
    name = resolve_mlx_device(device, metal_available=mx.metal.is_available())
    mx.set_default_device(mx.gpu if name == "gpu" else mx.cpu)
    return name


def compute_dtype_for(device: str) -> mx.Dtype:
    """bfloat16 on the Apple GPU, float32 on the CPU."""
    return mx.bfloat16 if device == "gpu" else mx.float32


def model_from_state(config: Mapping[str, Any], state: Mapping[str, np.ndarray], *, device: str = "cpu") -> GPT:
    """An MLX model of `config` holding the given weights (e.g. an artifact's)."""
    model = build_model(config, compute_dtype=compute_dtype_for(device))
    load_state_dict_numpy(model, state)
    return model


def train(
    config: Mapping[str, Any],
    train_stream: Callable[[], TokenSource],
    *,
    budget_s: float,
    seed: int,
    device: str = "auto",
    progress: Callable[[StepReport], None] | None = None,
    log: Callable[[str], None] = lambda line: None,
    report_every_s: float = 1.0,
    max_steps: int | None = None,
    memory_bytes: int | None = None,
    compile_step: bool | None = None,
    initial_state: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train a fresh model of `config` for `budget_s` seconds of optimiser steps on the tokens of
    `train_stream()` (a fresh stream from the split's first token, e.g. BenchData.train_stream).

    `memory_bytes` is the memory the automatic micro-batching plans for (default: the machine's);
    `initial_state` (shared names, e.g. from the other backend) replaces the seeded initial weights.
    """
    dev = select_device(device)
    dtype = compute_dtype_for(dev)
    model = build_model(config, seed=seed, compute_dtype=dtype)
    if initial_state is not None:
        load_state_dict_numpy(model, initial_state)
    param_count = sum(p.size for _, p in tree_flatten(model.parameters()))
    plan = plan_batch(
        config,
        memory_bytes=memory_bytes,
        activation_bytes=2 if dtype == mx.bfloat16 else 4,
        attention_scores=True,
    )
    optimiser = MixedOptimizer(dict(tree_flatten(model.parameters())), config)
    schedule = Schedule.from_config(config, budget_s)
    step_tokens = plan.step_tokens(1)
    log(
        f"backend:mlx device:{dev} dtype:{dtype} params:{param_count} grad_accum_steps:{plan.grad_accum_steps} "
        f"micro_batch:{plan.seqs_per_micro}x{plan.seq_len} step_tokens:{step_tokens} plan:{plan.note}"
    )

    if compile_step is None:
        compile_step = dev == "gpu"  # on the CPU, compiling (a C++ build per graph) costs more than it saves

    quantised_bits = qat_bits(config, {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())})

    def gradient_for(looping: bool, qat: bool) -> Callable:
        # One function per depth and QAT state: a compiled graph fixes both.
        def loss_of(tree: dict, x: mx.array, y: mx.array) -> mx.array:
            if qat:  # the quantised weights forward, the gradient straight through (trainer/qat.py)
                flat = dict(tree_flatten(tree))
                for name, bits in quantised_bits.items():
                    w = flat[name]
                    flat[name] = w + mx.stop_gradient(_fake_quantise(w, bits, scale_floor(config, bits)) - w)
                tree = tree_unflatten(list(flat.items()))
            model.update(tree)  # the model is only the function; `params` below holds the weights
            model.looping = looping
            return model.loss(x, y)

        grad = mx.value_and_grad(loss_of)
        return mx.compile(grad) if compile_step else grad

    gradients: dict[tuple[bool, bool], Callable] = {}

    def gradient_now() -> Callable:
        key = (looping_now, qat_now)
        if key not in gradients:
            gradients[key] = gradient_for(*key)
        return gradients[key]

    looping_now = looping_at(config, 0.0, budget_s)
    qat_now = False
    params = dict(tree_flatten(model.parameters()))

    def micro_batches(tokens: TokenSource):
        span = plan.micro_tokens + 1
        for _ in range(plan.grad_accum_steps):
            chunk = np.asarray(tokens.take(span)).astype(np.int32)
            yield (mx.array(chunk[:-1].reshape(plan.seqs_per_micro, plan.seq_len)),
                   mx.array(chunk[1:].reshape(plan.seqs_per_micro, plan.seq_len)))  # fmt: skip

    def one_step(tokens: TokenSource, step: int, lr_mult: float, keep_going: Callable[[int], bool] | None = None) -> tuple[mx.array, int]:
        """One optimiser step; `keep_going(done)` after each micro-batch but the last says
        whether another may start. Returns the mean loss and the micro-batches done."""
        nonlocal params
        tree = tree_unflatten(list(params.items()))
        total = mx.zeros((), dtype=mx.float32)
        summed: dict[str, mx.array] | None = None
        done = 0
        value_and_grad = gradient_now()
        for x, y in micro_batches(tokens):
            loss, grads = value_and_grad(tree, x, y)
            flat = dict(tree_flatten(grads))
            summed = flat if summed is None else {k: summed[k] + flat[k] for k in flat}
            total = total + loss
            done += 1
            if plan.grad_accum_steps > 1:
                mx.eval(summed, total)  # bound the graph (and memory) to one micro-batch
            if done < plan.grad_accum_steps and keep_going is not None and not keep_going(done):
                break  # the budget ran out inside the step: the mean gradient of those done
        scale = 1.0 / done
        grads = {k: g * scale for k, g in summed.items()} if done > 1 else summed
        params = optimiser.step(params, grads, lr_scale=lr_mult, momentum=schedule.momentum(step), weight_decay_scale=schedule.weight_decay(elapsed))
        mean = total * scale
        mx.eval(params, optimiser.arrays(), mean)
        return mean, done

    if compile_step:
        started = time.perf_counter()
        x, y = next(micro_batches(train_stream()))
        mx.eval(gradient_now()(tree_unflatten(list(params.items())), x, y))  # compile and run once; nothing is applied
        log(f"primed compiled gradient in {time.perf_counter() - started:.1f}s (1 batch, not trained on)")

    tokens = train_stream()
    losses: list[float] = []
    swa: dict[str, mx.array] | None = None  # the sum of the SWA snapshots so far
    swa_count = 0
    elapsed = 0.0
    step = 0
    micros_total = 0
    train_tokens = 0
    last_report = -math.inf
    lr_mult = 1.0
    mx.reset_peak_memory()
    cpu = CpuShareMeter()
    cpu.start()
    started = time.perf_counter()

    def keep_going(done: int) -> bool:
        nonlocal last_report
        now = time.perf_counter() - started
        per_micro = now / (micros_total + done)
        # A first micro-batch carries one-time costs, so only a clear overrun is refused.
        if step == 0 and done == 1 and per_micro * plan.grad_accum_steps > _MEASURED_SLACK * budget_s:
            how = f"as measured (its first micro-batch took {per_micro:.1f}s, and a step has {plan.grad_accum_steps})"
            raise BudgetError(step_too_long_message(config, budget_s, per_micro * plan.grad_accum_steps, how))
        if now - last_report >= report_every_s:
            last_report = now
            report = StepReport(step, losses[-1] if losses else float("nan"), now, budget_s, train_tokens + done * plan.micro_tokens,
                                lr_mult, micro=done, micros=plan.grad_accum_steps)  # fmt: skip
            log(f"step:{step + 1} micro_batch:{done}/{plan.grad_accum_steps} train_time:{now:.1f}s")
            if progress is not None:
                progress(report)
        return now + per_micro <= budget_s

    while max_steps is None or step < max_steps:
        expected = elapsed / step if step else 0.0
        expected_micro = elapsed / micros_total if micros_total else 0.0
        if elapsed + expected_micro > budget_s:
            break
        watch = step == 0 or elapsed + expected > budget_s or expected >= report_every_s
        lr_mult = schedule.lr(step, elapsed)
        if quantised_bits and qat_on(config, step, lr_mult) != qat_now:
            qat_now = not qat_now
            log(f"qat: {'on' if qat_now else 'off'} at step {step} (lr_scale {lr_mult:.3f}) for {len(quantised_bits)} matrices")
        if not looping_now and looping_at(config, elapsed, budget_s):
            looping_now = True
            log(f"looping: layers {config['loop_start']}-{config['loop_end']} run {config['num_loops'] + 1} times from step {step}")
        mean, done = one_step(tokens, step, lr_mult, keep_going if watch else None)
        value = float(mean.item())
        losses.append(value)
        step += 1
        if swa_collects(config, step, lr_mult):
            swa = dict(params) if swa is None else {k: swa[k] + params[k] for k in params}
            swa_count += 1
            mx.eval(swa)
        micros_total += done
        train_tokens += done * plan.micro_tokens
        elapsed = time.perf_counter() - started
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step}")
        if elapsed - last_report >= report_every_s or step == 1:
            last_report = elapsed
            report = StepReport(step, value, elapsed, budget_s, train_tokens, lr_mult)
            log(f"step:{step} train_loss:{value:.4f} train_time:{elapsed:.1f}s tokens_per_s:{report.tokens_per_s:.0f} lr_scale:{lr_mult:.3f}")
            if progress is not None:
                progress(report)
    elapsed = time.perf_counter() - started
    cpu_share = cpu.stop()
    final = optimiser.ema if optimiser.ema is not None else params
    model.looping = bool(config["num_loops"])  # evaluation runs the looped depth
    if swa is not None and swa_count > 1:  # one snapshot would only be an older model
        final = {k: v / swa_count for k, v in swa.items()}
        log(f"swa: final weights are the mean of {swa_count} snapshots")
    model.update(tree_unflatten(list(final.items())))
    mx.eval(model.parameters())
    log(f"stopped step:{step} train_time:{elapsed:.2f}s budget:{budget_s:.2f}s")
    return TrainResult(
        state=state_dict_numpy(model),
        steps=step,
        train_tokens=train_tokens,
        training_seconds=elapsed,
        final_train_loss=losses[-1] if losses else float("nan"),
        losses=tuple(losses),
        micro_batch_tokens=plan.micro_tokens,
        grad_accum_steps=plan.grad_accum_steps,
        params=param_count,
        extra={"peak_memory_mib": mx.get_peak_memory() // (1 << 20), "device": dev, "plan": plan.note, "cpu_share": cpu_share, "micro_batches": micros_total},
    )



def _fake_quantise(w: mx.array, bits: int, floor: float) -> mx.array:
    """`w` rounded to `bits`-bit codes on per-row scales max(row max / qmax, floor), in float32
    (model_torch.fake_quantise's rule)."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.astype(mx.float32)
    scale = mx.maximum(mx.max(mx.abs(w32), axis=1, keepdims=True) / qmax, floor)
    return (mx.clip(mx.round(w32 / scale), -qmax, qmax) * scale).astype(w.dtype)

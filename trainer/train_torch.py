"""The torch training loop: one resolved config, a token stream and a wall-clock budget in, the
trained weights (numpy, stable names) out.

What it guarantees:
- Optimisers as the baseline splits them: Muon for the 2-D weights of the blocks; Adam for the
  embedding (tied_embed_lr, or embed_lr when untied), the untied head (head_lr) and every
  vector, scalar and control tensor (scalar_lr). LRs follow `trainer.schedule` (warm-up in
  steps, warmdown over the last fraction of the wall-clock budget, min-LR floor); Muon's
  momentum ramps over its warm-up steps; optional global gradient clipping and EMA of weights
  (the EMA is what is returned when `ema_decay > 0`).
- Time: only optimiser steps are on the clock. On one device the budget is kept at micro-batch
  granularity: a micro-batch starts only if the clock plus the mean micro-batch time stays
  within the budget, so training ends within about one micro-batch of the budget; a step cut
  short applies the mean gradient of the micro-batches it did (and counts only their tokens).
  Under DDP a step starts only if the expected step time fits (ranks must agree on the last
  micro-batch). A first step that clearly cannot fit is refused: once its first micro-batch is
  measured, a step projected to need more than twice the budget raises
  trainer.step_budget.BudgetError, naming the knobs (a step of one micro-batch is never
  refused after the fact: it has overrun by at most that micro-batch). Long steps
  report progress per micro-batch. The CPU share the trainer got (trainer.cpu_share) is
  measured over the training clock. On CUDA the compiled graph is primed
  by a few steps that are then undone (weights, optimiser state and data stream restored),
  as the challenge does, so compilation is not charged to training.
- Devices: CUDA runs in bf16 autocast with torch.compile; CPU runs in float32, eager unless
  `compile_model=True` (then compiled, falling back to eager if compiling fails). Several
  GPUs (torchrun: RANK/WORLD_SIZE set) train under DDP with the same global batch: each step
  consumes `train_batch_tokens` tokens in total, split between ranks and micro-batches. All
  ranks share one clock (the slowest rank's), so they stop together and their LRs agree: their
  weights stay identical.
- Deterministic on CPU for a given seed and data: same seed, same weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from p2pgolf.trainer.model_spec import parameter_role, role_lr, role_weight_decay
from p2pgolf.trainer.model_torch import GPT, build_model, set_qat
from p2pgolf.trainer.qat import qat_bits, qat_on, scale_floor
from p2pgolf.trainer.muon_torch import Muon
from p2pgolf.trainer.cpu_share import CpuShareMeter
from p2pgolf.trainer.schedule import Schedule
from p2pgolf.trainer.step_budget import BudgetError, step_too_long_message
# Result types and the batch plan are shared with the MLX backend.
from p2pgolf.trainer.train_common import BatchPlan, StepReport, TokenSource, TrainResult, looping_at, swa_collects
from p2pgolf.trainer.train_common import plan_batch as shared_plan_batch

__all__ = ["TokenSource", "TrainResult", "StepReport", "train", "plan_batch", "resolve_device", "state_to_numpy", "load_numpy_state"]

_PRIMING_STEPS = 3
_MEASURED_SLACK = 2.0  # refuse a first step measured to need more than this many budgets


def plan_batch(config: Mapping[str, Any], world_size: int, device: torch.device) -> BatchPlan:
    """How a step's `train_batch_tokens` split into ranks, micro-batches and sequences
    (trainer.train_common.plan_batch, told this device's memory and attention kernel)."""
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory
        return shared_plan_batch(config, world_size, memory_bytes=memory, activation_bytes=2, attention_scores=False)
    return shared_plan_batch(config, world_size)


def resolve_device(name: str = "auto") -> torch.device:
    """auto: CUDA if available (the local rank's GPU under torchrun), else CPU."""
    import os

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device cuda was asked for but torch sees no CUDA GPU")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device mps was asked for but torch sees no Apple GPU")
    return torch.device(name)


def state_to_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as float32 numpy arrays under their stable names."""
    return {name: p.detach().float().cpu().numpy().copy() for name, p in model.state_dict().items()}


def load_numpy_state(model: torch.nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load float arrays (e.g. from an artifact) into `model`; every name must match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unknown = sorted(set(state) - set(own))
    if missing or unknown:
        raise ValueError(f"state does not fit the model: missing {missing[:5]}, unknown {unknown[:5]}")
    with torch.no_grad():
        for name, tensor in own.items():
            value = torch.from_numpy(np.asarray(state[name], dtype=np.float32))
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"tensor {name} has shape {tuple(value.shape)}, the model needs {tuple(tensor.shape)}")
            tensor.copy_(value.to(tensor.dtype))


def train(
    config: Mapping[str, Any],
    train_stream: Callable[[], TokenSource],
    *,
    budget_s: float,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[StepReport], None] | None = None,
    log: Callable[[str], None] = lambda line: None,
    report_every_s: float = 1.0,
    max_steps: int | None = None,
    compile_model: bool | None = None,
    initial_state: Mapping[str, np.ndarray] | None = None,
) -> TrainResult:
    """Train a fresh model of `config` for `budget_s` seconds of optimiser steps on the tokens of
    `train_stream()` (a fresh stream from the split's first token, e.g. BenchData.train_stream).

    Under torchrun the process group must already be initialised (see trainer.runner).
    """
    device = torch.device(device)
    tokens = train_stream()
    dist = torch.distributed
    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if distributed else 1
    rank = dist.get_rank() if distributed else 0
    cuda = device.type == "cuda"
    compile_model = cuda if compile_model is None else compile_model

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    model = build_model(config).to(device)
    if initial_state is not None:  # e.g. the other backend's initial weights (parity tests)
        load_numpy_state(model, initial_state)
    if cuda:
        model.stream_dtype = torch.bfloat16  # matches the autocast below
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 matmuls left (as the baseline)
        torch.backends.cudnn.allow_tf32 = True
    params = sum(p.numel() for p in model.parameters())
    runner: torch.nn.Module = torch.compile(model, dynamic=False, fullgraph=True) if compile_model else model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(runner, device_ids=[device.index] if cuda else None)
    optimisers, muon = _optimisers(model, config, fused=cuda)
    schedule = Schedule.from_config(config, budget_s)
    plan = plan_batch(config, world, device)
    step_tokens = plan.step_tokens(world)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=cuda)
    ema: dict[str, torch.Tensor] | None = None
    log(
        f"params:{params} world_size:{world} grad_accum_steps:{plan.grad_accum_steps} "
        f"micro_batch:{plan.seqs_per_micro}x{plan.seq_len} step_tokens:{step_tokens} device:{device} compile:{compile_model}"
    )

    def next_micro_batch() -> tuple[torch.Tensor, torch.Tensor]:
        # All ranks read the same contiguous span and keep their own slice (as the baseline).
        span = plan.micro_tokens + 1
        chunk = np.asarray(tokens.take(span * world))
        local = torch.from_numpy(chunk[rank * span : (rank + 1) * span].astype(np.int64))
        if cuda:
            local = local.pin_memory().to(device, non_blocking=True)
        x = local[:-1].view(plan.seqs_per_micro, plan.seq_len)
        y = local[1:].view(plan.seqs_per_micro, plan.seq_len)
        return x, y

    def one_step(step: int, lr_mult: float, keep_going: Callable[[int], bool] | None = None) -> tuple[torch.Tensor, int]:
        """One optimiser step; `keep_going(done)` after each micro-batch but the last says
        whether another may start. Returns the mean loss and the micro-batches done."""
        for opt in optimisers:
            opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        accum = plan.grad_accum_steps
        done = 0
        for micro in range(accum):
            if distributed:
                runner.require_backward_grad_sync = micro == accum - 1
            x, y = next_micro_batch()
            with torch.autocast(**autocast):
                loss = runner(x, y)
            (loss / accum).backward()
            total += loss.detach()
            done += 1
            if done < accum and keep_going is not None and not keep_going(done):
                break
        if done < accum:
            # The budget ran out inside the step: use the mean gradient of the micro-batches done.
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p.grad.mul_(accum / done)
        for group in muon.param_groups:
            group["momentum"] = schedule.momentum(step)
            group["weight_decay"] = config["muon_weight_decay"] * wd_mult
        for opt in optimisers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_mult
        if config["grad_clip_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip_norm"])
        for opt in optimisers:
            opt.step()
        if ema is not None:
            with torch.no_grad():
                decay = config["ema_decay"]
                for name, p in model.named_parameters():
                    ema[name].lerp_(p.detach().float(), 1.0 - decay)
        return total / done, done

    model.looping = looping_at(config, 0.0, budget_s)
    if compile_model:
        try:
            _prime(model, optimisers, one_step, log)
        except Exception as exc:
            # A CPU without a working compiler toolchain still trains, eagerly. On CUDA (and
            # under DDP) compiling is the expected path, so its failure is the run's failure.
            if cuda or distributed:
                raise
            log(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); training eagerly")
            runner = model
        tokens = train_stream()  # the priming steps' batches are not trained on
    if config["ema_decay"] > 0:
        ema = {name: p.detach().clone().float() for name, p in model.named_parameters()}

    wd_mult = 1.0  # the Muon weight decay's taper (schedule.weight_decay), read by one_step
    quantised_bits = qat_bits(config, {name: tuple(p.shape) for name, p in model.named_parameters()})
    qat_active = False
    losses: list[torch.Tensor] = []
    swa: dict[str, torch.Tensor] | None = None  # the sum of the SWA snapshots so far
    swa_count = 0
    elapsed = 0.0
    step = 0
    micros_total = 0  # micro-batches trained so far, over all steps
    train_tokens = 0
    last_report = -math.inf
    lr_mult = 1.0
    cpu = CpuShareMeter()
    _sync(device)
    cpu.start()
    started = time.perf_counter()

    def keep_going(done: int) -> bool:
        """Inside a step that is first, long or near the budget's end: measure the clock after
        each micro-batch, refuse a first step that cannot fit, report progress, and say
        whether another micro-batch fits."""
        nonlocal last_report
        _sync(device)
        now = time.perf_counter() - started
        per_micro = now / (micros_total + done)
        # A first micro-batch carries one-time costs, so only a clear overrun is refused.
        if step == 0 and done == 1 and per_micro * plan.grad_accum_steps > _MEASURED_SLACK * budget_s:
            raise BudgetError(_measured_refusal(config, budget_s, per_micro, plan.grad_accum_steps))
        if now - last_report >= report_every_s:
            last_report = now
            report = StepReport(step, float("nan") if not losses else float(losses[-1].item()), now, budget_s,
                                train_tokens + done * plan.micro_tokens * world, lr_mult, micro=done, micros=plan.grad_accum_steps)  # fmt: skip
            log(f"step:{step + 1} micro_batch:{done}/{plan.grad_accum_steps} train_time:{now:.1f}s")
            if progress is not None and rank == 0:
                progress(report)
        return now + per_micro <= budget_s

    while max_steps is None or step < max_steps:
        if distributed:
            # One clock for all ranks (the slowest): the LR schedule reads it, so ranks that
            # each used their own would apply different LRs in the warmdown and drift apart.
            clock = torch.tensor(elapsed, dtype=torch.float64, device=device)
            dist.all_reduce(clock, op=dist.ReduceOp.MAX)
            elapsed = float(clock.item())
        # Expected cost of the next step and micro-batch: the means so far (first: assume it fits).
        expected = elapsed / step if step else 0.0
        expected_micro = elapsed / micros_total if micros_total else 0.0
        if elapsed + (expected if distributed else expected_micro) > budget_s:
            break
        watch = not distributed and (step == 0 or elapsed + expected > budget_s or expected >= report_every_s)
        lr_mult = schedule.lr(step, elapsed)
        wd_mult = schedule.weight_decay(elapsed)
        if quantised_bits and qat_on(config, step, lr_mult) != qat_active:
            qat_active = not qat_active  # a compiled runner recompiles once for it
            set_qat(model, quantised_bits if qat_active else {}, lambda bits: scale_floor(config, bits))
            log(f"qat: {'on' if qat_active else 'off'} at step {step} (lr_scale {lr_mult:.3f}) for {len(quantised_bits)} matrices")
        if not model.looping and looping_at(config, elapsed, budget_s):
            model.looping = True  # a compiled runner recompiles once for the deeper graph
            log(f"looping: layers {config['loop_start']}-{config['loop_end']} run {config['num_loops'] + 1} times from step {step}")
        loss, done = one_step(step, lr_mult, keep_going if watch else None)
        losses.append(loss)
        step += 1
        if swa_collects(config, step, lr_mult):
            with torch.no_grad():
                if swa is None:
                    swa = {name: p.detach().clone().float() for name, p in model.named_parameters()}
                else:
                    for name, p in model.named_parameters():
                        swa[name].add_(p.detach().float())
            swa_count += 1
        micros_total += done
        train_tokens += done * plan.micro_tokens * world
        if cuda and not distributed:
            # Between reports, skip the sync (the GPU runs ahead) unless the end is near.
            elapsed = time.perf_counter() - started
            near_end = elapsed + 4 * elapsed / step > budget_s
            if not near_end and elapsed - last_report < report_every_s:
                continue
        _sync(device)
        elapsed = time.perf_counter() - started
        if elapsed - last_report >= report_every_s or step == 1:
            last_report = elapsed
            value = float(loss.item())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step}")
            report = StepReport(step, value, elapsed, budget_s, train_tokens, lr_mult)
            log(f"step:{step} train_loss:{value:.4f} train_time:{elapsed:.1f}s tokens_per_s:{report.tokens_per_s:.0f} lr_scale:{lr_mult:.3f}")
            if progress is not None and rank == 0:
                progress(report)
    _sync(device)
    elapsed = time.perf_counter() - started
    cpu_share = cpu.stop()
    loss_values = tuple(float(v) for v in torch.stack(losses).cpu().tolist()) if losses else ()
    if loss_values and not math.isfinite(loss_values[-1]):
        raise FloatingPointError(f"training loss became {loss_values[-1]} at step {step}")
    if ema is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(ema[name].to(p.dtype))
    model.looping = bool(config["num_loops"])  # evaluation runs the looped depth
    set_qat(model, {}, lambda bits: 0.0)  # evaluation reads the exported artifact's own codes
    if swa is not None and swa_count > 1:  # one snapshot would only be an older model
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_((swa[name] / swa_count).to(p.dtype))
        log(f"swa: final weights are the mean of {swa_count} snapshots")
    log(f"stopped step:{step} train_time:{elapsed:.2f}s budget:{budget_s:.2f}s train_tokens:{train_tokens} cpu_share:{cpu_share}")
    return TrainResult(
        state=state_to_numpy(model),
        steps=step,
        train_tokens=train_tokens,
        training_seconds=elapsed,
        final_train_loss=loss_values[-1] if loss_values else float("nan"),
        losses=loss_values,
        micro_batch_tokens=plan.micro_tokens,
        grad_accum_steps=plan.grad_accum_steps,
        params=params,
        extra={"peak_memory_mib": torch.cuda.max_memory_allocated(device) // (1 << 20) if cuda else 0, "cpu_share": cpu_share, "micro_batches": micros_total},
    )


def _measured_refusal(config: Mapping[str, Any], budget_s: float, per_micro_s: float, accum: int) -> str:
    how = f"as measured (its first micro-batch took {per_micro_s:.1f}s, and a step has {accum})"
    return step_too_long_message(config, budget_s, per_micro_s * accum, how)


def _optimisers(model: GPT, config: Mapping[str, Any], *, fused: bool) -> tuple[list[torch.optim.Optimizer], Muon]:
    by_role: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        by_role.setdefault(parameter_role(name, tuple(p.shape)), []).append(p)
    adam = dict(betas=(config["beta1"], config["beta2"]), eps=config["adam_eps"], fused=fused)
    optimisers: list[torch.optim.Optimizer] = []
    for role in ("embed", "head", "scalar"):
        if by_role.get(role):
            lr = role_lr(role, config)
            decay = role_weight_decay(role, config)
            groups = [{"params": by_role[role], "lr": lr, "base_lr": lr}]
            # AdamW only with a decay, so runs without one take exactly the steps they always did
            optimisers.append(torch.optim.AdamW(groups, weight_decay=decay, **adam) if decay > 0 else torch.optim.Adam(groups, **adam))
    muon = Muon(
        by_role.get("muon", []),
        lr=config["matrix_lr"],
        momentum=config["muon_momentum"],
        backend_steps=config["muon_backend_steps"],
        weight_decay=config["muon_weight_decay"],
        row_normalize=config["muon_row_normalize"],
        coeffs=config["muon_ns_coeffs"],
    )
    for group in muon.param_groups:
        group["base_lr"] = config["matrix_lr"]
    return [*optimisers, muon], muon


def _prime(model, optimisers, one_step, log) -> None:
    """Run a few steps to compile the graph, then restore weights and optimisers."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = [copy.deepcopy(opt.state_dict()) for opt in optimisers]
    started = time.perf_counter()
    try:
        for i in range(_PRIMING_STEPS):
            one_step(i, 1.0)
        _sync(next(model.parameters()).device)
    finally:  # undone even if compiling failed, so a fallback starts from the true init
        model.load_state_dict(weights)
        for opt, state in zip(optimisers, states):
            opt.load_state_dict(state)
    log(f"primed compiled graph in {time.perf_counter() - started:.1f}s ({_PRIMING_STEPS} steps, undone)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

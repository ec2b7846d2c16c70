"""One experiment inside the child process, whichever backend trains it: data, training, artifact,
round trip, evaluation, and the files of the run directory.

A backend supplies two functions (`Backend`): train a fresh model, and evaluate a state (named
float32 arrays) under a knob config. Everything else - the data check, the artifact, the size
rule, metrics.json and result.json - is here once, so torch and MLX runs are recorded alike.

What it guarantees: the reported val_bpb and val_loss are those of the model reloaded from the
artifact file's bytes (the challenge's rule); the model before quantisation is evaluated too
and recorded as prequant_* in metrics.json, so the quantisation cost is visible. Evaluation is
not on the training clock. Only rank 0 writes files. Every finished run records the speed it
trained at and whether it was degraded (trainer.throughput, judged against the run directories
beside it): result.json's `throughput`, and a degraded run's `note` says why.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from p2pgolf.protocol import knobs
from p2pgolf.protocol.records import HardwareClass
from p2pgolf.trainer.config import RunConfig, benchmark_vocab_size
from p2pgolf.trainer.eval_plan import EvalResult
from p2pgolf.trainer.progress import Progress
from p2pgolf.trainer.run_history import past_runs
from p2pgolf.trainer.runner import ARTIFACT_NAME, build_result, write_json
from p2pgolf.trainer.throughput import judge_throughput
from p2pgolf.trainer.train_common import StepReport, TrainResult

__all__ = ["Backend", "run_with_backend", "evaluate_artifact_with"]

# evaluate_state(state, config, data, progress) -> EvalResult; data is a trainer.datasets.BenchData
EvaluateState = Callable[[Mapping[str, np.ndarray], Mapping[str, Any], Any, Callable[[int, int], None] | None], EvalResult]


@dataclass(frozen=True)
class Backend:
    """What a backend contributes to a run."""

    name: str  # "torch" | "mlx": the trainer string and the artifact's code files
    device: str  # for metrics.json
    accel: str  # "cuda" | "mps" | "cpu": the hardware class recorded is that of the device that trains
    train: Callable[..., TrainResult]  # train(knobs, data, progress=on_step, log=log) -> TrainResult
    evaluate_state: EvaluateState
    # grams(state, config, batches) -> {matrix name: input Gram matrix}, for GPTQ
    grams: Callable[..., dict[str, np.ndarray]] | None = None
    rank: int = 0
    world: int = 1


def run_with_backend(run: RunConfig, run_dir: Path, backend: Backend, *, log: Callable[[str], None], emit: Callable[[Progress], None]) -> dict[str, Any]:
    """Run `run` with `backend`; write run_dir/{artifact, metrics.json, result.json}; returns the result."""
    from p2pgolf.trainer.artifact import code_bytes, export_artifact, export_options
    from p2pgolf.trainer.datasets import load_benchmark_data
    from p2pgolf.trainer.hardware import detect_hardware

    rank, world = backend.rank, backend.world
    emit(Progress("loading", budget_s=run.budget_s, message=f"loading {run.bench.name} data"))
    loading_started = time.perf_counter()
    data = load_benchmark_data(run.bench, run.data_dir, run.tokenizer or None)
    emit(Progress("loading", budget_s=run.budget_s, message=f"loaded {run.bench.name} data in {time.perf_counter() - loading_started:.1f}s"))
    need = max(data.vocab_size, benchmark_vocab_size(run.bench))
    if run.knobs["vocab_size"] < need:
        raise ValueError(f"vocab_size={run.knobs['vocab_size']} does not cover the data's {need} token ids")
    hw = detect_hardware(backend.accel).to_wire()
    log(f"run {run.bench.name} base={run.base} diff={dict(run.diff)} seed={run.seed} budget={run.budget_s}s backend={backend.name} hw={hw}")

    def on_step(report: StepReport) -> None:
        emit(
            Progress(
                "training",
                step=report.step,
                train_loss=report.train_loss if math.isfinite(report.train_loss) else 0.0,
                elapsed_s=report.elapsed_s,
                budget_s=report.budget_s,
                tokens_per_s=report.tokens_per_s,
                message=f"step {report.step + 1}: micro-batch {report.micro}/{report.micros}" if report.micros else "",
            )
        )

    emit(Progress("training", budget_s=run.budget_s, message=f"building the model; then {run.budget_s:g}s of training"))
    trained = backend.train(run.knobs, data, progress=on_step, log=log)
    tokens_per_s = trained.train_tokens / trained.training_seconds if trained.training_seconds > 0 else 0.0
    history = past_runs(run_dir.parent, exclude=run_dir)
    throughput = judge_throughput(tokens_per_s, trained.extra.get("cpu_share"), HardwareClass.from_wire(hw).key, knobs.throughput_shape(run.knobs), history)
    if throughput.degraded:
        log(f"DEGRADED: {throughput.reason}")

    emit(Progress("exporting", elapsed_s=trained.training_seconds, budget_s=run.budget_s))
    hessians = None
    if run.knobs["gptq"] and backend.grams is not None:
        from p2pgolf.trainer.calibration import calibration_batches

        started = time.perf_counter()
        hessians = backend.grams(trained.state, run.knobs, calibration_batches(run.knobs, data.train_stream))
        log(f"gptq: calibrated {len(hessians)} matrices on {run.knobs['gptq_calib_tokens']} training tokens in {time.perf_counter() - started:.1f}s")
    blob = export_artifact(trained.state, run.knobs, **export_options(run.knobs), hessians=hessians)
    code = code_bytes(backend.name)
    artifact_bytes = len(blob) + code
    sha = hashlib.sha256(blob).hexdigest()
    if rank == 0:
        (run_dir / ARTIFACT_NAME).write_bytes(blob)
    log(f"artifact: {len(blob)} bytes compressed + {code} bytes of code = {artifact_bytes} bytes (sha256 {sha})")

    def on_eval(done: int, total: int) -> None:
        emit(Progress("evaluating", elapsed_s=trained.training_seconds, budget_s=run.budget_s, done=done, total=total))

    emit(Progress("evaluating", message="evaluating the model before quantisation"))
    pre = backend.evaluate_state(trained.state, run.knobs, data, on_eval)
    log(f"prequant val_loss:{pre.val_loss:.6f} val_bpb:{pre.val_bpb:.6f} tokens:{pre.tokens} eval_time:{pre.seconds:.1f}s")
    emit(Progress("evaluating", message="evaluating the model reloaded from the artifact"))
    post = evaluate_artifact_with(backend.evaluate_state, blob, data, on_eval)
    log(f"roundtrip val_loss:{post.val_loss:.6f} val_bpb:{post.val_bpb:.6f} tokens:{post.tokens} eval_time:{post.seconds:.1f}s")
    if not (math.isfinite(post.val_bpb) and post.val_bpb > 0):
        raise FloatingPointError(f"the round-tripped model scores val_bpb={post.val_bpb}")

    cap = run.bench.size_cap
    status, error = "ok", None
    if artifact_bytes > cap:
        status = "oversize"
        error = (
            f"artifact is {artifact_bytes:,} bytes ({len(blob):,} compressed model + {code:,} code), "
            f"{artifact_bytes - cap:,} over the size cap of {cap:,} bytes"
        )
        log(f"OVERSIZE: {error}")
    metrics = {
        "val_bpb": post.val_bpb,
        "val_loss": post.val_loss,
        "steps": trained.steps,
        "train_tokens": trained.train_tokens,
        "artifact_bytes": artifact_bytes,
        "eval_tokens": post.tokens,
        "eval_partial": post.partial,
    }
    full = {
        **metrics,
        "prequant_val_bpb": pre.val_bpb,
        "prequant_val_loss": pre.val_loss,
        "training_seconds": trained.training_seconds,
        "tokens_per_s": tokens_per_s,
        "cpu_share": throughput.cpu_share,
        "degraded": throughput.degraded,
        "step_avg_ms": 1000.0 * trained.training_seconds / max(trained.steps, 1),
        "final_train_loss": trained.final_train_loss,
        "eval_seconds": post.seconds,
        "eval_bytes": post.bytes,
        "artifact_file_bytes": len(blob),
        "code_bytes": code,
        "size_cap": cap,
        "params": trained.params,
        "grad_accum_steps": trained.grad_accum_steps,
        "micro_batches": trained.extra.get("micro_batches", trained.steps * trained.grad_accum_steps),
        "micro_batch_tokens": trained.micro_batch_tokens,
        "world_size": world,
        "backend": backend.name,
        "device": backend.device,
        "peak_memory_mib": trained.extra.get("peak_memory_mib", 0),
        "status": status,
    }
    result = build_result(
        run, hw=hw, metrics=metrics, artifact_sha256=sha, status=status, error=error, backend=backend.name,
        throughput=throughput.to_json(), note=throughput.note(),
    )  # fmt: skip
    if rank == 0:
        write_json(run_dir / "metrics.json", full)
        write_json(run_dir / "result.json", result)
    emit(Progress("done", step=trained.steps, elapsed_s=trained.training_seconds, budget_s=run.budget_s, message=status))
    return result


def evaluate_artifact_with(evaluate_state: EvaluateState, blob: bytes, data, progress=None) -> EvalResult:
    """Rebuild the model from artifact bytes alone (its own config) and evaluate it on `data`."""
    from p2pgolf.trainer.artifact import load_artifact

    loaded = load_artifact(blob)
    return evaluate_state(loaded.state, loaded.config, data, progress)

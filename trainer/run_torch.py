"""One experiment with the torch backend, inside the child process: data, training, artifact,
round trip, evaluation, and the files of the run directory.

What it guarantees: the reported val_bpb and val_loss are those of the model reloaded from the
artifact file's bytes (the challenge's rule); the model before quantisation is evaluated too
and recorded as prequant_* in metrics.json, so the quantisation cost is visible. Evaluation is
not on the training clock. Under torchrun every rank trains and evaluates its share; rank 0
writes the files.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import RunConfig, benchmark_vocab_size
from trainer.progress import Progress
from trainer.runner import ARTIFACT_NAME, build_result, write_json

__all__ = ["run_torch", "evaluate_artifact"]

_EVAL_BATCH_TOKENS = {"cuda": 131072, "cpu": 16384, "mps": 32768}


def run_torch(run: RunConfig, run_dir: Path, *, log: Callable[[str], None], emit: Callable[[Progress], None]) -> dict[str, Any]:
    """Run `run`, write run_dir/{artifact, metrics.json, result.json}; returns the result."""
    import torch

    from trainer.artifact import code_bytes, export_artifact
    from trainer.datasets import load_benchmark_data
    from trainer.hardware import detect_hardware
    from trainer.train_torch import resolve_device, train

    emit(Progress("starting", budget_s=run.budget_s))
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(run.device)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        torch.set_float32_matmul_precision("high")  # TF32 on CUDA; no effect on CPU
        emit(Progress("loading", budget_s=run.budget_s, message=f"loading {run.bench.name} data"))
        data = load_benchmark_data(run.bench, run.data_dir)
        need = max(data.vocab_size, benchmark_vocab_size(run.bench))
        if run.knobs["vocab_size"] < need:
            raise ValueError(f"vocab_size={run.knobs['vocab_size']} does not cover the data's {need} token ids")
        # The class of the device that does the work (a CPU run on a GPU machine is a CPU result).
        hw = detect_hardware(device.type if device.type in ("cuda", "mps", "cpu") else None).to_wire()
        log(f"run {run.bench.name} base={run.base} diff={dict(run.diff)} seed={run.seed} budget={run.budget_s}s hw={hw}")

        def on_step(report) -> None:
            emit(
                Progress(
                    "training",
                    step=report.step,
                    train_loss=report.train_loss,
                    elapsed_s=report.elapsed_s,
                    budget_s=report.budget_s,
                    tokens_per_s=report.tokens_per_s,
                )
            )

        emit(Progress("training", budget_s=run.budget_s))
        trained = train(run.knobs, data.train_stream, budget_s=run.budget_s, seed=run.seed, device=device, progress=on_step, log=log)

        emit(Progress("exporting", elapsed_s=trained.training_seconds, budget_s=run.budget_s))
        blob = export_artifact(trained.state, run.knobs, quant_bits=run.knobs["quant_bits"], compressor=run.knobs["compressor"])
        code = code_bytes("torch")
        artifact_bytes = len(blob) + code
        sha = hashlib.sha256(blob).hexdigest()
        if rank == 0:
            (run_dir / ARTIFACT_NAME).write_bytes(blob)
        log(f"artifact: {len(blob)} bytes compressed + {code} bytes of code = {artifact_bytes} bytes (sha256 {sha})")

        def on_eval(done: int, total: int) -> None:
            emit(Progress("evaluating", elapsed_s=trained.training_seconds, budget_s=run.budget_s, done=done, total=total))

        emit(Progress("evaluating", message="evaluating the model before quantisation"))
        pre = _evaluate_state(trained.state, run, data, device, rank, world, on_eval)
        log(f"prequant val_loss:{pre.val_loss:.6f} val_bpb:{pre.val_bpb:.6f} tokens:{pre.tokens} eval_time:{pre.seconds:.1f}s")
        emit(Progress("evaluating", message="evaluating the model reloaded from the artifact"))
        post = evaluate_artifact(blob, run, data, device, rank, world, on_eval)
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
            "tokens_per_s": trained.train_tokens / trained.training_seconds if trained.training_seconds > 0 else 0.0,
            "step_avg_ms": 1000.0 * trained.training_seconds / max(trained.steps, 1),
            "final_train_loss": trained.final_train_loss,
            "eval_seconds": post.seconds,
            "eval_bytes": post.bytes,
            "artifact_file_bytes": len(blob),
            "code_bytes": code,
            "size_cap": cap,
            "params": trained.params,
            "grad_accum_steps": trained.grad_accum_steps,
            "micro_batch_tokens": trained.micro_batch_tokens,
            "world_size": world,
            "device": str(device),
            "peak_memory_mib": trained.extra.get("peak_memory_mib", 0),
            "status": status,
        }
        result = build_result(run, hw=hw, metrics=metrics, artifact_sha256=sha, status=status, error=error)
        if rank == 0:
            write_json(run_dir / "metrics.json", full)
            write_json(run_dir / "result.json", result)
        emit(Progress("done", step=trained.steps, elapsed_s=trained.training_seconds, budget_s=run.budget_s, message=status))
        return result
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def evaluate_artifact(blob: bytes, run: RunConfig, data, device, rank: int = 0, world: int = 1, progress=None):
    """Rebuild the model from artifact bytes alone and evaluate it (the reported score)."""
    from trainer.artifact import load_artifact

    loaded = load_artifact(blob)
    return _evaluate_state(loaded.state, run, data, device, rank, world, progress, config=loaded.config)


def _evaluate_state(state, run: RunConfig, data, device, rank, world, progress, config=None):
    import torch

    from trainer.evaluate_torch import evaluate
    from trainer.model_torch import build_model
    from trainer.train_torch import load_numpy_state

    config = config or run.knobs
    model = build_model(config).to(device)
    load_numpy_state(model, state)
    result = evaluate(
        model,
        data.val_tokens,
        data.byte_tables,
        seq_len=config["eval_seq_len"] or config["train_seq_len"],
        stride=config["eval_stride"],
        token_cap=run.eval_token_cap,
        device=device,
        batch_tokens=_EVAL_BATCH_TOKENS.get(device.type, 16384),
        autocast_dtype=torch.bfloat16 if device.type == "cuda" else None,
        rank=rank,
        world_size=world,
        progress=progress,
    )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result

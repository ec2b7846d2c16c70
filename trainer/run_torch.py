"""One experiment with the torch backend, inside the child process: the device (and under
torchrun the process group), then `trainer.run_common.run_with_backend` with torch's training
and evaluation (data, artifact, round trip and the run directory's files are shared with MLX).

What it guarantees: those of run_common (the reported score is the round-tripped artifact's);
under torchrun every rank trains and evaluates its share; rank 0 writes the files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pgolf.trainer.config import RunConfig
from p2pgolf.trainer.progress import Progress
from p2pgolf.trainer.run_common import Backend, run_with_backend

__all__ = ["run_torch", "evaluate_artifact"]

_EVAL_BATCH_TOKENS = {"cuda": 131072, "cpu": 16384, "mps": 32768}


def run_torch(run: RunConfig, run_dir: Path, *, log: Callable[[str], None], emit: Callable[[Progress], None]) -> dict[str, Any]:
    """Run `run`, write run_dir/{artifact, metrics.json, result.json}; returns the result."""
    import torch

    from p2pgolf.trainer.train_torch import resolve_device, train

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
        backend = Backend(
            name="torch",
            device=str(device),
            # The class of the device that does the work (a CPU run on a GPU machine is a CPU result).
            accel=device.type if device.type in ("cuda", "mps", "cpu") else "cpu",
            train=lambda knobs, data, **kw: train(
                knobs, data.train_stream, budget_s=run.budget_s, seed=run.seed, device=device,
                compile_model={"auto": None, "on": True, "off": False}[run.compile],
                max_steps=run.extra.get("max_steps"), **kw,  # a step cap (bundled train_gpt.py's ITERATIONS; tests)
            ),  # fmt: skip
            evaluate_state=lambda state, config, data, progress: _evaluate_state(state, run, data, device, rank, world, progress, config=config),
            grams=lambda state, config, batches: grams_of(state, config, batches, device),
            rank=rank,
            world=world,
        )
        return run_with_backend(run, run_dir, backend, log=log, emit=emit)
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def grams_of(state, config, batches, device) -> dict:
    """GPTQ's calibration Gram matrices of a trained state (trainer/calibration.py)."""
    from p2pgolf.trainer.model_torch import build_model, collect_grams
    from p2pgolf.trainer.train_torch import load_numpy_state

    model = build_model(config).to(device)
    load_numpy_state(model, state)
    return collect_grams(model, batches, device)


def evaluate_artifact(blob: bytes, run: RunConfig, data, device, rank: int = 0, world: int = 1, progress=None):
    """Rebuild the model from artifact bytes alone and evaluate it (the reported score)."""
    from p2pgolf.trainer.artifact import load_artifact

    loaded = load_artifact(blob)
    return _evaluate_state(loaded.state, run, data, device, rank, world, progress, config=loaded.config)


def _evaluate_state(state, run: RunConfig, data, device, rank, world, progress, config=None):
    import torch

    from p2pgolf.trainer.evaluate_torch import evaluate
    from p2pgolf.trainer.model_torch import build_model
    from p2pgolf.trainer.ttt import TTTSettings
    from p2pgolf.trainer.train_torch import load_numpy_state

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
        ttt=TTTSettings.from_config(config),
    )
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result

"""One experiment with the MLX backend, inside the child process: pick the device, then
`trainer.run_common.run_with_backend` with MLX's training and evaluation.

What it guarantees: those of run_common - the same data check, artifact, size rule, metrics.json
and result.json as a torch run (trainer "p2pgolf-mlx/<version>"), the reported score being the
round-tripped artifact's; the hardware class is that of the device that trained (the Apple
chip and its memory on a Mac's GPU, the processor on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pgolf.trainer.config import RunConfig
from p2pgolf.trainer.progress import Progress
from p2pgolf.trainer.run_common import Backend, run_with_backend

__all__ = ["run_mlx", "evaluate_state"]

_EVAL_BATCH_TOKENS = {"gpu": 65536, "cpu": 16384}


def run_mlx(run: RunConfig, run_dir: Path, *, log: Callable[[str], None], emit: Callable[[Progress], None]) -> dict[str, Any]:
    """Run `run` with MLX, write run_dir/{artifact, metrics.json, result.json}; returns the result."""
    from p2pgolf.trainer.train_mlx import select_device, train

    emit(Progress("starting", budget_s=run.budget_s))
    device = select_device(run.device)
    backend = Backend(
        name="mlx",
        device=f"mlx:{device}",
        accel="mps" if device == "gpu" else "cpu",
        train=lambda knobs, data, **kw: train(knobs, data.train_stream, budget_s=run.budget_s, seed=run.seed, device=run.device, **kw),
        evaluate_state=lambda state, config, data, progress: evaluate_state(
            state, config, data, device=device, token_cap=run.eval_token_cap, progress=progress
        ),
        grams=lambda state, config, batches: grams_of(state, config, batches, device=device),
    )
    return run_with_backend(run, run_dir, backend, log=log, emit=emit)


def grams_of(state, config, batches, *, device: str = "cpu") -> dict:
    """GPTQ's calibration Gram matrices of a trained state (trainer/calibration.py)."""
    from p2pgolf.trainer.model_mlx import collect_grams
    from p2pgolf.trainer.train_mlx import model_from_state

    return collect_grams(model_from_state(config, state, device=device), batches)


def evaluate_state(state, config, data, *, device: str = "cpu", token_cap: int = 0, progress=None):
    """Evaluate named float32 arrays as an MLX model of `config` on `data` (a BenchData)."""
    from p2pgolf.trainer.evaluate_mlx import evaluate
    from p2pgolf.trainer.train_mlx import model_from_state
    from p2pgolf.trainer.ttt import TTTSettings

    model = model_from_state(config, state, device=device)
    return evaluate(
        model,
        data.val_tokens,
        data.byte_tables,
        seq_len=config["eval_seq_len"] or config["train_seq_len"],
        stride=config["eval_stride"],
        token_cap=token_cap,
        batch_tokens=_EVAL_BATCH_TOKENS.get(device, 16384),
        progress=progress,
        ttt=TTTSettings.from_config(config),
    )

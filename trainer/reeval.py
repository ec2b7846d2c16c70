"""Re-evaluation: score an artifact file with a benchmark's fixed evaluation, exactly as a training
run scores its own artifact (trainer.run_common: the model rebuilt from the artifact's bytes and
its own config, the same windows, the same byte accounting), on whatever hardware this node has.

    reevaluate(path, bench_name, data_dir=None, backend="auto", device="auto", eval_token_cap=0, tokenizer=None)
        -> Reeval                     # in this process (imports torch or mlx)
    run_reeval(path, bench_name, ..., timeout_s=600) -> Reeval
                                      # in a child process: the caller never imports torch,
                                      # and a crash or a hang costs the child, not the node

Guarantees: `artifact_bytes` counts what training counts (the compressed file plus this node's
code files, trainer.artifact.code_bytes); a file that is not a well-formed artifact is an
ArtifactError / ReevalError naming what is wrong, never a score; `eval_token_cap` > 0 scores only
the first that many validation targets (a claim scored on a capped split is re-scored on the same
cap). `python -m p2pgolf.trainer.reeval ARTIFACT BENCH [DATA_DIR] [BACKEND] [DEVICE] [TOKEN_CAP]` prints
one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from p2pgolf.trainer.child_env import child_env

__all__ = ["Reeval", "ReevalError", "reevaluate", "run_reeval"]


class ReevalError(Exception):
    """The re-evaluation could not run or gave no score (the message says why)."""


@dataclass(frozen=True)
class Reeval:
    """What one re-evaluation measured."""

    val_bpb: float
    val_loss: float
    eval_tokens: int
    eval_partial: bool
    eval_bytes: int
    eval_seconds: float  # the evaluation itself
    seconds: float  # data, model and evaluation (what the check cost, start-up of a child aside)
    artifact_file_bytes: int
    code_bytes: int
    artifact_bytes: int
    backend: str
    device: str
    hw: dict[str, Any]
    trainer: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reevaluate(path: str | os.PathLike, bench_name: str, *, data_dir: str | os.PathLike | None = None, backend: str = "auto", device: str = "auto", eval_token_cap: int = 0, tokenizer: str | None = None) -> Reeval:
    """Score the artifact at `path` on `bench_name`'s validation split in the claim's `tokenizer`
    (None: the benchmark's), in this process."""
    import math

    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.trainer.artifact import code_bytes
    from p2pgolf.trainer.backend import check_device, resolve_backend
    from p2pgolf.trainer.datasets import load_benchmark_data
    from p2pgolf.trainer.hardware import detect_hardware
    from p2pgolf.trainer.run_common import evaluate_artifact_with
    from p2pgolf.trainer.runner import trainer_version

    started = time.perf_counter()
    bench = benchmark(bench_name)
    blob = Path(path).read_bytes()
    chosen = resolve_backend(backend)
    check_device(chosen, device)
    data = load_benchmark_data(bench, data_dir, tokenizer)
    if chosen == "mlx":
        from p2pgolf.trainer.run_mlx import evaluate_state as mlx_evaluate
        from p2pgolf.trainer.train_mlx import select_device

        mlx_device = select_device(device)
        evaluate_state = lambda state, config, data, progress: mlx_evaluate(state, config, data, device=mlx_device, token_cap=eval_token_cap, progress=progress)  # noqa: E731
        accel, device_name = ("mps" if mlx_device == "gpu" else "cpu"), f"mlx:{mlx_device}"
    else:
        from types import SimpleNamespace

        from p2pgolf.trainer.run_torch import _evaluate_state
        from p2pgolf.trainer.train_torch import resolve_device

        torch_device = resolve_device(device)
        # _evaluate_state reads only the token cap from the run; the config comes from the artifact
        run = SimpleNamespace(eval_token_cap=eval_token_cap, knobs=None)
        evaluate_state = lambda state, config, data, progress: _evaluate_state(state, run, data, torch_device, 0, 1, progress, config=config)  # noqa: E731
        accel = torch_device.type if torch_device.type in ("cuda", "mps", "cpu") else "cpu"
        device_name = str(torch_device)
    result = evaluate_artifact_with(evaluate_state, blob, data)
    if not (math.isfinite(result.val_bpb) and result.val_bpb > 0):
        raise ReevalError(f"the artifact scores val_bpb={result.val_bpb}")
    code = code_bytes(chosen)
    return Reeval(
        val_bpb=float(result.val_bpb),
        val_loss=float(result.val_loss),
        eval_tokens=int(result.tokens),
        eval_partial=bool(result.partial),
        eval_bytes=int(result.bytes),
        eval_seconds=float(result.seconds),
        seconds=time.perf_counter() - started,
        artifact_file_bytes=len(blob),
        code_bytes=code,
        artifact_bytes=len(blob) + code,
        backend=chosen,
        device=device_name,
        hw=detect_hardware(accel).to_wire(),
        trainer=trainer_version(chosen),
    )


def run_reeval(path: str | os.PathLike, bench_name: str, *, data_dir: str | os.PathLike | None = None, backend: str = "auto", device: str = "auto", eval_token_cap: int = 0, timeout_s: float = 600.0, tokenizer: str | None = None) -> Reeval:
    """`reevaluate` in a child process, stopped after `timeout_s`. ReevalError on any failure."""
    env = child_env()
    args = [sys.executable, "-m", "p2pgolf.trainer.reeval", str(path), bench_name, str(data_dir or ""), backend, device, str(int(eval_token_cap)), tokenizer or ""]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ReevalError(f"the re-evaluation did not finish within {timeout_s:g} s") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    try:
        doc = json.loads(lines[-1]) if lines else None
    except ValueError:
        doc = None
    if done.returncode != 0 or not isinstance(doc, dict):
        tail = [ln for ln in done.stderr.splitlines() if ln.strip()]
        why = doc.get("error") if isinstance(doc, dict) and "error" in doc else (tail[-1] if tail else f"exit code {done.returncode}")
        raise ReevalError(f"the re-evaluation failed: {why}")
    return Reeval(**doc)


def _main(argv: list[str]) -> int:
    if len(argv) != 7:
        print("usage: python -m p2pgolf.trainer.reeval ARTIFACT BENCH DATA_DIR BACKEND DEVICE TOKEN_CAP TOKENIZER", file=sys.stderr)
        return 2
    path, bench, data_dir, backend, device, cap, tokenizer = argv
    try:
        result = reevaluate(path, bench, data_dir=data_dir or None, backend=backend, device=device, eval_token_cap=int(cap), tokenizer=tokenizer or None)
    except Exception as exc:  # the parent reads one JSON line either way
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]}))
        return 1
    print(json.dumps(result.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

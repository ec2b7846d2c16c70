"""The trainer's public entry point: run one experiment and get its outcome.

`run_experiment` checks everything it can first (benchmark, base config, every knob of the
diff, seed, budget, backend) and raises ProtocolError / BackendUnavailable naming the problem
before any process starts; then it runs the experiment in a child process (trainer.runner)
and returns a RunOutcome whose `result` is the run's result.json. A failed run is an outcome
with status "failed", never an exception; a run cancelled through its `cancel` event is one with
status "abandoned", its child process group already stopped. Importing this module does not
import torch.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from p2pgolf.protocol.candidates import candidate_id
from p2pgolf.trainer.config import RunConfig, make_run_config
from p2pgolf.trainer.progress import Progress
from p2pgolf.trainer.runner import RunDirError, RunOutcome, launch

__all__ = ["run_experiment", "prepare_run", "default_run_dir", "RunOutcome", "RunConfig", "RunDirError", "Progress"]


def prepare_run(
    bench_name: str,
    base: str,
    diff: Mapping[str, Any],
    *,
    budget_s: float | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    eval_token_cap: int = 0,
    compile: str = "auto",
    tokenizer: str | None = None,
) -> RunConfig:
    """The checked config of a run (nothing is started). Raises ProtocolError or
    BackendUnavailable with a one-line reason; PlanRefused (a ProtocolError naming the knob)
    for a config whose parameters, evaluation work or memory this device cannot afford
    (trainer/run_plan.py)."""
    from p2pgolf.trainer.backend import check_device, resolve_backend
    from p2pgolf.trainer.run_plan import check_memory, device_budget

    chosen = resolve_backend(backend)
    check_device(chosen, device)
    run = make_run_config(
        bench_name,
        base,
        diff,
        seed=seed,
        budget_s=budget_s,
        backend=chosen,
        device=device,
        eval_token_cap=eval_token_cap,
        compile=compile,
        data_dir=data_dir,
        tokenizer=tokenizer,
    )
    budget = device_budget(chosen, device)
    if budget is not None:
        check_memory(run.knobs, budget)
    return run


def run_experiment(
    bench_name: str,
    base: str,
    diff: Mapping[str, Any],
    *,
    budget_s: float | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    eval_token_cap: int = 0,
    compile: str = "auto",
    progress: Callable[[Progress], None] | None = None,
    timeout_s: float | None = None,
    cancel: threading.Event | None = None,
    tokenizer: str | None = None,
) -> RunOutcome:
    """Train and score base + diff on a benchmark in a child process; write the run directory
    `out_dir` (config.json, log.txt, metrics.json, the artifact, result.json). Setting `cancel`
    (from another thread) stops the child promptly; see trainer.runner.launch."""
    run = prepare_run(
        bench_name,
        base,
        diff,
        budget_s=budget_s,
        seed=seed,
        data_dir=data_dir,
        backend=backend,
        device=device,
        eval_token_cap=eval_token_cap,
        compile=compile,
        tokenizer=tokenizer,
    )
    return launch(run, Path(out_dir), progress=progress, timeout_s=timeout_s, cancel=cancel)


def default_run_dir(runs_dir: str | os.PathLike, base: str, diff: Mapping[str, Any], tokenizer: str = "sp1024") -> Path:
    """runs_dir / <UTC timestamp>-<first 8 hex of the candidate id>, never an existing path."""
    stem = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{candidate_id(base, diff, tokenizer)[:8]}"
    path = Path(runs_dir) / stem
    n = 1
    while path.exists():
        n += 1
        path = Path(runs_dir) / f"{stem}-{n}"
    return path

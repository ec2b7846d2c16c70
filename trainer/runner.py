"""Run one experiment in a child process with a wall-clock budget, and write its run directory.

Parent side (`launch`): writes `config.json`, starts `python -m p2pgolf.trainer.runner RUN_DIR` in its
own process group, relays its progress events (`trainer.progress`), kills the group if it runs
past a hard deadline or its caller cancels it, and always leaves a `result.json` behind. Child side (`child_main`):
loads the data, trains, exports the artifact, reloads it and evaluates the round-tripped model
(the reported score), and writes `log.txt`, `metrics.json`, the artifact and `result.json`. On
a machine with several CUDA GPUs the child re-launches itself under torchrun (DDP).

What it guarantees:
- A crash, out-of-memory, bad data or a hung run costs this experiment only; the parent never
  raises for a failed run, it returns status "failed" with a one-line error.
- `result.json` has exactly the keys of RESULT_KEYS: bench (id), bench_name, base, diff
  (normalised), tokenizer (the variant the candidate used), seed, budget_s, hw {accel, model, count, memory_mib}, metrics {val_bpb,
  val_loss, steps, train_tokens, artifact_bytes, eval_tokens, eval_partial} (null when the run
  failed), artifact_sha256 (or null), trainer, status ("ok" | "oversize" | "failed" |
  "abandoned"), error (null or one line), parents ([]), note ("", or "degraded: <reason>"),
  created_ms (wall-clock ms when the result was written: a record signed from the run takes its
  time from here, so signing the same run twice gives the same record), throughput (null when
  the run failed, else tokens_per_s, cpu_share, usual_tokens_per_s, usual_runs, degraded, reason:
  see trainer.throughput).
- A config whose first step cannot fit the budget even on an optimistic estimate is refused
  before anything is written or started (trainer.step_budget.BudgetError, naming the knobs).
- Ctrl-C (KeyboardInterrupt) or any other exception in the launcher stops the child's process
  group and still leaves a result.json, status "abandoned" with an error saying what happened
  and in which phase, before the exception goes on.
- Setting the `cancel` event given to `launch` stops the child's whole process group within
  about CANCEL_POLL_S plus CANCEL_GRACE_S and gives status "abandoned", unless the child had
  already written its result (then that result stands: a finished run is never thrown away).
- An artifact over the benchmark's size cap gives status "oversize" and an error saying by how
  much; its metrics are still measured and reported.
- A run directory that already holds a run is never overwritten.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pgolf.trainer.child_env import child_env
from p2pgolf.trainer.config import RunConfig
from p2pgolf.trainer.progress import Progress, emit, parse_line

__all__ = ["RunOutcome", "RunDirError", "launch", "child_main", "build_result", "write_json", "RESULT_KEYS", "ARTIFACT_NAME", "ABANDONED", "trainer_version"]

RESULT_KEYS = (
    "bench", "bench_name", "base", "diff", "tokenizer", "seed", "budget_s", "hw", "metrics",
    "artifact_sha256", "trainer", "status", "error", "parents", "note", "created_ms", "throughput",
)  # fmt: skip
ARTIFACT_NAME = "model.p2pgolf"
# Evaluation and export happen after the budget; allow them this much beyond it by default.
_DEFAULT_GRACE_S = 600.0
ABANDONED = "abandoned"  # the status of a run its caller cancelled
# The relay loop looks at the cancel event this often; a cancelled child gets this long after
# SIGTERM before SIGKILL (a trainer installs no SIGTERM handler, so it normally dies at once).
CANCEL_POLL_S = 0.2
PARENT_ENV = "P2PGOLF_RUNNER_PARENT"  # the pid of the process that launched the run
PARENT_POLL_S = 1.0
CANCEL_GRACE_S = 3.0
_DEADLINE_GRACE_S = 10.0


class RunDirError(ValueError):
    """The run directory cannot be used (it already holds a run)."""


@dataclass(frozen=True)
class RunOutcome:
    """What one experiment produced: the run directory and its result.json and metrics.json."""

    run_dir: Path
    result: dict[str, Any]
    metrics: dict[str, Any]  # the fuller metrics.json (empty if the run failed early)

    @property
    def status(self) -> str:
        return self.result["status"]

    @property
    def error(self) -> str | None:
        return self.result["error"]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def trainer_version(backend: str = "torch") -> str:
    """The trainer string recorded in results, e.g. "p2pgolf-torch/0.1.0"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("p2pgolf")
    except PackageNotFoundError:
        v = "0.0.0"
    return f"p2pgolf-{backend}/{v}"


def launch(
    run: RunConfig,
    run_dir: str | os.PathLike,
    *,
    progress: Callable[[Progress], None] | None = None,
    timeout_s: float | None = None,
    cancel: threading.Event | None = None,
) -> RunOutcome:
    """Run `run` in a child process writing `run_dir`; returns when the child is done or killed.

    `timeout_s` is the hard deadline for the whole child: None gives budget + 600 s (start-up,
    export and evaluation), 0 or less means no deadline (e.g. a full evaluation on a CPU).
    `cancel`, when set (from any thread), stops the child's process group promptly; the
    outcome then has status "abandoned" unless the child had already written its result.
    """
    run_dir = Path(run_dir)
    from p2pgolf.trainer.run_history import past_runs
    from p2pgolf.trainer.step_budget import check_run_fits

    check_run_fits(run, past_runs(run_dir.parent))
    _claim_run_dir(run_dir)
    (run_dir / "config.json").write_text(json.dumps(run.to_json(), indent=2, sort_keys=True) + "\n")
    deadline_s = run.budget_s + _DEFAULT_GRACE_S if timeout_s is None else timeout_s
    if deadline_s <= 0:
        deadline_s = float("inf")
    env = child_env(PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())})
    with open(run_dir / "stderr.txt", "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "p2pgolf.trainer.runner", str(run_dir)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: a kill reaches torchrun's workers too
            text=True,
            errors="replace",  # a stray undecodable byte must not stop the relay
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True)
        reader.start()
        killed_for = None
        last_event: Progress | None = None
        status = "failed"
        started = time.monotonic()
        poll_s = CANCEL_POLL_S if cancel is not None else 1.0
        overdue = f"the run passed its hard deadline of {deadline_s:.0f}s and was stopped"
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    killed_for, status = "the run was abandoned before it finished", ABANDONED
                    break
                left = deadline_s - (time.monotonic() - started)
                if left <= 0:
                    killed_for = overdue
                    break
                try:
                    line = lines.get(timeout=min(left, poll_s))
                except queue.Empty:
                    continue
                if line is None:
                    break
                event = parse_line(line)
                if event is not None:
                    last_event = event
                    if progress is not None:
                        progress(event)
            # Its stdout closed; give it until the deadline to exit (still listening for cancel).
            while not killed_for:
                left = deadline_s - (time.monotonic() - started)
                if left <= 0:
                    killed_for = overdue
                elif cancel is not None and cancel.is_set():
                    killed_for, status = "the run was abandoned before it finished", ABANDONED
                else:
                    try:
                        child.wait(timeout=min(left, poll_s))
                        break
                    except subprocess.TimeoutExpired:
                        continue
        except BaseException as exc:
            _stop_group(child, grace_s=CANCEL_GRACE_S)
            child.wait()
            _finish(run, run_dir, child.returncode, _interrupted(exc, last_event), ABANDONED)
            raise
        if killed_for:
            _stop_group(child, grace_s=CANCEL_GRACE_S if status == ABANDONED else _DEADLINE_GRACE_S)
        code = child.wait()
        reader.join(timeout=5)
    return _finish(run, run_dir, code, killed_for, status)


def child_main(run_dir: str | os.PathLike) -> int:
    """Entry point of the child process: run the experiment described in run_dir/config.json."""
    run_dir = Path(run_dir)
    _stop_when_orphaned()
    rank = int(os.environ.get("RANK", "0"))
    log_file = open(run_dir / "log.txt", "a", encoding="utf-8") if rank == 0 else None

    def log(line: str) -> None:
        if log_file is not None:
            log_file.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            log_file.flush()

    try:
        run = RunConfig.from_json(json.loads((run_dir / "config.json").read_text()))
        from p2pgolf.trainer.backend import resolve_backend

        backend = resolve_backend(run.backend)
        quiet = emit if rank == 0 else (lambda event: None)
        if backend == "mlx":
            try:
                from p2pgolf.trainer.run_mlx import run_mlx
            except ModuleNotFoundError as exc:
                if exc.name != "p2pgolf.trainer.run_mlx":
                    raise
                raise RuntimeError("the mlx backend cannot run experiments yet; use --backend torch") from None
            run_mlx(run, run_dir, log=log, emit=quiet)
            return 0
        if _relaunch_under_torchrun(run, run_dir):
            return 0  # not reached: exec replaces this process
        from p2pgolf.trainer.run_torch import run_torch

        run_torch(run, run_dir, log=log, emit=quiet)
        return 0
    except BaseException as exc:  # the child reports every failure in result.json
        log(traceback.format_exc())
        if rank == 0:
            write_json(run_dir / "error.txt", {"error": _one_line(exc)})
        return 1
    finally:
        if log_file is not None:
            log_file.close()


def build_result(
    run: RunConfig,
    *,
    hw: dict[str, Any],
    metrics: dict[str, Any] | None,
    artifact_sha256: str | None,
    status: str,
    error: str | None,
    backend: str = "torch",
    throughput: dict[str, Any] | None = None,
    note: str = "",
    created_ms: int | None = None,
) -> dict[str, Any]:
    """A result.json object with exactly RESULT_KEYS (created_ms: now unless given)."""
    result = {
        "bench": run.bench.id,
        "bench_name": run.bench.name,
        "base": run.base,
        "diff": dict(run.diff),
        "tokenizer": run.tokenizer_name,
        "seed": run.seed,
        "budget_s": float(run.budget_s),
        "hw": hw,
        "metrics": metrics,
        "artifact_sha256": artifact_sha256,
        "trainer": trainer_version(backend),
        "status": status,
        "error": error,
        "parents": [],
        "note": note,
        "created_ms": int(time.time() * 1000) if created_ms is None else int(created_ms),
        "throughput": throughput,
    }
    assert tuple(result) == RESULT_KEYS
    return result


def _claim_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory")
    if run_dir.is_dir() and any((run_dir / name).exists() for name in ("config.json", "result.json")):
        raise RunDirError(f"{run_dir} already holds a run; choose another --out directory")
    run_dir.mkdir(parents=True, exist_ok=True)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _stop_group(child: subprocess.Popen, grace_s: float = _DEADLINE_GRACE_S) -> None:
    """Terminate the child's process group (only processes this launch started): SIGTERM, and
    SIGKILL if it is still there after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if child.poll() is not None:
            return
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def _finish(run: RunConfig, run_dir: Path, code: int, killed_for: str | None, status: str = "failed") -> RunOutcome:
    result_path = run_dir / "result.json"
    metrics_path = run_dir / "metrics.json"
    # The child writes result.json atomically as its last act, so one that exists is complete;
    # a cancel that came after that point abandons nothing.
    if result_path.exists() and (not killed_for or status == ABANDONED):
        result = json.loads(result_path.read_text())
    else:
        error = killed_for or _child_error(run_dir, code)
        backend = run.backend if run.backend in ("torch", "mlx") else "torch"  # the trainer string names the backend
        result = build_result(run, hw=_hardware(), metrics=None, artifact_sha256=None, status=status, error=error, backend=backend)
        write_json(result_path, result)
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return RunOutcome(run_dir=run_dir, result=result, metrics=metrics)


def _interrupted(exc: BaseException, last: Progress | None) -> str:
    """Why a launcher stopped its run, for result.json: what, and in which phase."""
    what = "interrupted by Ctrl-C (SIGINT)" if isinstance(exc, KeyboardInterrupt) else f"stopped by its launcher ({type(exc).__name__})"
    if last is None:
        where = "before the trainer reported anything"
    elif last.phase == "training" and last.step:
        where = f"while training, after step {last.step} of its {last.budget_s:g}s budget"
    else:
        where = f"while {last.phase}"
    return f"{what} {where}; nothing was measured"


def _child_error(run_dir: Path, code: int) -> str:
    try:
        return json.loads((run_dir / "error.txt").read_text())["error"]
    except (OSError, ValueError, KeyError):
        pass
    tail = ""
    try:
        lines = [ln for ln in (run_dir / "stderr.txt").read_text(errors="replace").splitlines() if ln.strip()]
        tail = lines[-1].strip() if lines else ""
    except OSError:
        pass
    cause = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return _one_line(f"the training process ended without a result ({cause}){': ' + tail if tail else ''}")


def _hardware() -> dict[str, Any]:
    from p2pgolf.trainer.hardware import detect_hardware

    return detect_hardware().to_wire()


def _relaunch_under_torchrun(run: RunConfig, run_dir: Path) -> bool:
    """On several CUDA GPUs, replace this process with torchrun over all of them."""
    if "RANK" in os.environ or run.device not in ("auto", "cuda"):
        return False
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return False
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={count}",
        "-m", "p2pgolf.trainer.runner", str(run_dir),
    ]  # fmt: skip
    sys.stdout.flush()
    os.execv(sys.executable, args)
    return True


def _stop_when_orphaned() -> None:
    """If the process that launched this run dies (a node killed with -9, a crash), stop the
    run's whole process group: nobody is left to read its result, and it would otherwise hold
    the CPU or GPU until its hard deadline. Watches both this process's parent (reparented when
    it exits) and the launcher by pid (under torchrun the parent is torchrun)."""
    launcher = int(os.environ.get(PARENT_ENV, "0") or 0)
    if launcher <= 0:
        return  # run by hand, not by launch()
    parent = os.getppid()

    def gone() -> bool:
        if os.getppid() != parent:
            return True
        try:
            os.kill(launcher, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # alive, another user's
        return False

    def watch() -> None:
        while not gone():
            time.sleep(PARENT_POLL_S)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def _one_line(value: Any) -> str:
    """One line of at most 500 characters; exceptions name their type unless their message is
    already written for the user."""
    text = str(value)
    if isinstance(value, BaseException) and not _is_user_facing(value):
        text = f"{type(value).__name__}: {text}" if text else type(value).__name__
    return " ".join(text.split())[:500]


def _is_user_facing(exc: BaseException) -> bool:
    from p2pgolf.protocol.errors import ProtocolError

    names = {"DataError", "ArtifactError", "ShardError", "RunDirError", "BackendUnavailable", "MemoryBudgetError", "BudgetError"}
    return isinstance(exc, ProtocolError) or type(exc).__name__ in names


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m p2pgolf.trainer.runner RUN_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(child_main(sys.argv[1]))

"""Run an approved competition training script as one experiment, and score it from its log.

The caller (node/research_loop.py, `p2pgolf train --script`) has checked approval and hands the
script's verified bytes. `launch_script` then:

- writes the script into a fresh working directory outside the node's home (system temp), and
  runs it there in its own process group: `python train_gpt.py` on CPU, `python -m
  torch.distributed.run --standalone --nproc_per_node=N train_gpt.py` on CUDA with N GPUs;
  a script that imports mlx (the challenge's train_gpt_mlx.py convention; `script_framework`
  reads its imports with ast, through a self-extracting wrapper, never running it) always runs
  with plain `python` (MLX on a Mac, the mlx[cpu] wheel on Linux), never under torchrun, and is
  refused before it starts, with the reason, on a node whose backend or device cannot run MLX
  (--backend torch, --device cuda, or mlx not installed);
- gives it a scrubbed environment: PATH, LANG, HOME and TMPDIR inside the working directory,
  CUDA_VISIBLE_DEVICES if set, and the settings the script reads (`script_env`): DATA_PATH,
  TOKENIZER_PATH, SEED, MAX_WALLCLOCK_SECONDS (the budget, as the challenge's train_gpt.py
  reads it), RUN_ID, VOCAB_SIZE when the script reads it, and the diff (bools as 1/0);
  nothing of the node's (no P2PGOLF_HOME, no PYTHONPATH);
- where unprivileged user namespaces work (Linux), also mounts an empty tmpfs over each
  directory in `hide` (the node's home) for the script's whole process tree, so even a script
  that knows the key file's absolute path cannot read it (its data, when it lies in the home, is
  bind-mounted into the working directory first). Without them (macOS, hardened kernels) the
  scrubbed environment and separate directory remain, and a script running as the same user
  could still open a path it guesses: approval is the gate (`ScriptOutcome.isolated` says which);
- applies the built-in runs' deadline (budget + grace), cancellation (`cancel` stops the whole
  process group within about CANCEL_POLL_S + CANCEL_GRACE_S) and crash containment (never
  raises for a failed run; trainer/script_guard.py kills the group if the launching process
  dies);
- reads the score by the benchmark's rule (`score_from_log`): the last line of the log of the
  form `final_<...>_exact val_loss:<float> val_bpb:<float>` (the challenge's
  `final_int8_zlib_roundtrip_exact` line: the score after the artifact's round trip; a
  sliding-window `final_..._exact` line printed after it counts instead, being the last);
- measures the artifact from the files the script wrote (every file under the working
  directory whose name ends in an ARTIFACT_SUFFIXES suffix) plus the script's own bytes, never
  from what the script prints;
- writes run_dir/result.json (trainer.runner.RESULT_KEYS), log.txt (stdout and stderr), the
  artifact files under run_dir/artifact/, and removes the working directory.

Status: "ok"; "failed" with the reason (crash, no score line, no artifact, deadline); "oversize"
when artifact + script bytes exceed the benchmark's cap; "abandoned" when cancelled.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pgolf.protocol.benchmarks import Benchmark
from p2pgolf.protocol.candidates import script_base
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.script_hparams import RUNNER_SET, read_hyperparameters
from p2pgolf.trainer.runner import ABANDONED, CANCEL_GRACE_S, CANCEL_POLL_S, RESULT_KEYS, RunOutcome, _claim_run_dir, _one_line, trainer_version, write_json

SCRIPT_NAME = "train_gpt.py"
ARTIFACT_SUFFIXES = (".ptz", ".xz", ".lzma", ".zst", ".zlib", ".gz", ".bz2", ".br")
SCORE_LINE = re.compile(r"^\s*(final_[A-Za-z0-9_]*_exact)\b.*?\bval_loss:\s*([-+0-9.eE]+)\s+val_bpb:\s*([-+0-9.eE]+)", re.M)
STEP_LINE = re.compile(r"\bstep:(\d+)(?:/\d+)?\b")
TOKENIZER_VOCAB = {"sp1024": 1024, "sp4096": 4096, "sp8192": 8192, "byte256": 256}
DEFAULT_GRACE_S = 600.0
DEADLINE_GRACE_S = 10.0
TRAINER_NAME = "script"


@dataclass(frozen=True)
class ScriptRun:
    """One script experiment: the verified bytes, the candidate and where its data is."""

    script: bytes
    bench: Benchmark
    tokenizer: str
    diff: Mapping[str, Any]
    seed: int
    budget_s: float
    data_path: str
    tokenizer_path: str = ""
    device: str = "auto"  # "cpu", "cuda", "mps" or "auto"
    backend: str = "auto"  # the node's --backend: "torch" refuses an MLX script
    gpus: int | None = None  # None: every visible CUDA device
    hide: tuple[str, ...] = ()  # paths the script must not see (the node's home)
    parents: tuple[str, ...] = field(default=())

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.script).hexdigest()


def script_env(run: ScriptRun, workdir: Path, diff: Mapping[str, Any], run_id: str, reads: Sequence[str] = ()) -> dict[str, str]:
    """The whole environment the script gets (nothing else of ours leaks)."""
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.defpath.lstrip(os.pathsep)]),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": str(workdir / "home"),
        "TMPDIR": str(workdir / "tmp"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
    }
    for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS"):
        if name in os.environ:
            env[name] = os.environ[name]
    if "VOCAB_SIZE" in reads and "VOCAB_SIZE" not in diff and run.tokenizer in TOKENIZER_VOCAB:
        env["VOCAB_SIZE"] = str(TOKENIZER_VOCAB[run.tokenizer])
    for name, value in diff.items():
        env[name] = _env_value(value)
    env.update(
        DATA_PATH=str(run.data_path),
        TOKENIZER_PATH=str(run.tokenizer_path),
        SEED=str(int(run.seed)),
        MAX_WALLCLOCK_SECONDS=f"{float(run.budget_s):g}",
        RUN_ID=run_id,
    )
    return env


def score_from_log(text: str) -> tuple[float, float, str] | None:
    """(val_loss, val_bpb, line name) of the last `final_..._exact` line, or None."""
    last = None
    for m in SCORE_LINE.finditer(text):
        try:
            loss, bpb = float(m.group(2)), float(m.group(3))
        except ValueError:
            continue
        if math.isfinite(loss) and math.isfinite(bpb) and loss > 0 and bpb > 0:
            last = (loss, bpb, m.group(1))
    return last


def user_namespaces_work() -> bool:
    """True if `unshare --user --map-root-user --mount` can run here (checked once)."""
    global _USERNS
    if _USERNS is None:
        exe = shutil.which("unshare")
        ok = False
        if exe and sys.platform.startswith("linux"):
            try:
                ok = subprocess.run([exe, "--user", "--map-root-user", "--mount", "true"], capture_output=True, timeout=10).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
        _USERNS = ok
    return _USERNS


_USERNS: bool | None = None


@dataclass(frozen=True)
class ScriptOutcome(RunOutcome):
    isolated: bool = False  # the node's home was hidden by a mount namespace


def launch_script(run: ScriptRun, run_dir: str | os.PathLike, *, timeout_s: float | None = None, cancel: threading.Event | None = None) -> ScriptOutcome:
    """Run the script; returns when it is done, failed, past its deadline or cancelled."""
    run_dir = Path(run_dir)
    _claim_run_dir(run_dir)
    started_ms = int(time.time() * 1000)
    try:
        vocab = read_hyperparameters(run.script)
        bad = sorted(set(run.diff) & RUNNER_SET)
        if bad:
            raise ProtocolError(f"{', '.join(bad)} set by the runner, not by a diff")
        diff = vocab.check_diff(run.diff)
        command = _command(run, script_framework(vocab.inner_source))
    except ProtocolError as exc:
        return _write(run, run_dir, dict(run.diff), None, status="failed", error=_one_line(exc))
    deadline_s = run.budget_s + DEFAULT_GRACE_S if timeout_s is None else timeout_s
    if deadline_s <= 0:
        deadline_s = math.inf
    workdir = Path(tempfile.mkdtemp(prefix="p2pgolf-script-"))
    isolated = False
    try:
        (workdir / "home").mkdir()
        (workdir / "tmp").mkdir()
        (workdir / SCRIPT_NAME).write_bytes(run.script)
        env = script_env(run, workdir, diff, run_id=f"p2pgolf-{started_ms}", reads=list(vocab.params))
        # the guard stops the script's group if this process dies (a node killed with -9)
        argv = [sys.executable, str(Path(__file__).with_name("script_guard.py")), str(os.getpid()), "--", *command]
        hide = [str(Path(p).resolve()) for p in run.hide if Path(p).is_dir()]
        if hide and user_namespaces_work():
            argv = _isolate(argv, hide, env, workdir)
            isolated = True
        log_path = run_dir / "log.txt"
        with open(log_path, "wb") as log_file:
            try:
                child = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                return _write(run, run_dir, diff, None, status="failed", error=_one_line(f"cannot start the script: {exc}"), isolated=isolated)
            killed_for, status = _wait(child, deadline_s, cancel)
        log_text = log_path.read_text(errors="replace")
        if killed_for:
            return _write(run, run_dir, diff, None, status=status, error=killed_for, isolated=isolated)
        if child.returncode != 0:
            tail = [ln for ln in log_text.splitlines() if ln.strip()][-1:] or [""]
            cause = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit code {child.returncode}"
            return _write(run, run_dir, diff, None, status="failed", error=_one_line(f"the script failed ({cause}): {tail[0].strip()}"), isolated=isolated)
        score = score_from_log(log_text)
        if score is None:
            return _write(run, run_dir, diff, None, status="failed", error="the script's log has no score line (final_..._exact val_loss:<x> val_bpb:<y>)", isolated=isolated)
        files = sorted(p for p in workdir.rglob("*") if p.is_file() and p.name.endswith(ARTIFACT_SUFFIXES) and not p.is_relative_to(workdir / "tmp"))
        if not files:
            return _write(run, run_dir, diff, None, status="failed", error=f"the script wrote no compressed artifact (a file ending in {', '.join(ARTIFACT_SUFFIXES)})", isolated=isolated)
        out = run_dir / "artifact"
        out.mkdir()
        sizes = 0
        for f in files:
            target = out / f.relative_to(workdir).as_posix().replace("/", "__")
            shutil.copyfile(f, target)
            sizes += target.stat().st_size
        total = sizes + len(run.script)
        steps = [int(m.group(1)) for m in STEP_LINE.finditer(log_text)]
        metrics = {
            "val_bpb": score[1],
            "val_loss": score[0],
            "steps": max(steps) if steps else 0,
            "train_tokens": 0,  # the script does not report it in a form we can trust
            "artifact_bytes": total,
            "eval_tokens": 0,
            "eval_partial": False,
        }
        artifact_sha = _sha_file(out / files[0].relative_to(workdir).as_posix().replace("/", "__")) if len(files) == 1 else None
        if total > run.bench.size_cap:
            error = f"artifact {sizes} bytes + script {len(run.script)} bytes = {total} bytes is over the cap of {run.bench.size_cap} by {total - run.bench.size_cap}"
            return _write(run, run_dir, diff, metrics, status="oversize", error=error, artifact=artifact_sha, isolated=isolated)
        return _write(run, run_dir, diff, metrics, status="ok", error=None, artifact=artifact_sha, isolated=isolated, note=score[2])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _isolate(argv: list[str], hide: list[str], env: dict[str, str], workdir: Path) -> list[str]:
    """argv run in a new user and mount namespace where each hidden directory is an empty tmpfs.
    DATA_PATH and TOKENIZER_PATH inside a hidden directory (the node's data dir) are first
    bind-mounted into the working directory, and `env` is pointed there."""
    steps: list[str] = []
    args: list[str] = []

    def arg(value: str) -> str:
        args.append(value)
        return f'"${len(args)}"'

    for i, name in enumerate(("DATA_PATH", "TOKENIZER_PATH")):
        source = env.get(name, "")
        if source and any(Path(source).resolve().is_relative_to(h) for h in hide) and Path(source).exists():
            target = workdir / "exposed" / f"{i}-{Path(source).name}"
            target.parent.mkdir(exist_ok=True)
            target.mkdir() if Path(source).is_dir() else target.touch()
            steps.append(f"mount --bind {arg(str(Path(source).resolve()))} {arg(str(target))}")
            env[name] = str(target)
    for h in hide:
        steps.append(f"mount -t tmpfs -o size=4k,mode=0700 tmpfs {arg(h)}")
    script = " && ".join(steps) + f' && shift {len(args)} && exec "$@"'
    return [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--mount", "--", "/bin/sh", "-c", script, "sh", *args, *argv]


def script_framework(source: str) -> str:
    """"mlx" if the (decoded) source imports mlx anywhere, else "torch"; read with ast, never run."""
    import ast

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        if any(n == "mlx" or n.startswith("mlx.") for n in names):
            return "mlx"
    return "torch"


def _command(run: ScriptRun, framework: str = "torch") -> list[str]:
    if framework == "mlx":
        from p2pgolf.trainer.backend import installed

        if run.backend == "torch":
            raise ProtocolError("the script imports mlx, which this node's --backend torch does not run; use --backend mlx or auto")
        if run.device not in ("auto", "cpu", "mps"):
            raise ProtocolError(f"the script imports mlx, which does not run on device {run.device!r}; use --device auto, cpu or mps")
        if not installed("mlx"):
            raise ProtocolError("the script imports mlx, which is not installed here: pip install 'p2pgolf[mlx]' (on Linux: pip install 'mlx[cpu]')")
        return [sys.executable, SCRIPT_NAME]  # MLX runs in one process: never torchrun
    gpus = 0
    if run.device in ("auto", "cuda"):
        gpus = run.gpus if run.gpus is not None else _cuda_count()
    if gpus >= 1 and run.device != "cpu":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", SCRIPT_NAME]
    return [sys.executable, SCRIPT_NAME]


def _cuda_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


def _wait(child: subprocess.Popen, deadline_s: float, cancel: threading.Event | None) -> tuple[str | None, str]:
    started = time.monotonic()
    while True:
        if cancel is not None and cancel.is_set():
            _stop(child, CANCEL_GRACE_S)
            return "the run was abandoned before it finished", ABANDONED
        left = deadline_s - (time.monotonic() - started)
        if left <= 0:
            _stop(child, DEADLINE_GRACE_S)
            return f"the script passed its hard deadline of {deadline_s:.0f}s and was stopped", "failed"
        try:
            child.wait(timeout=min(left, CANCEL_POLL_S))
            return None, "ok"
        except subprocess.TimeoutExpired:
            continue
        except BaseException:
            _stop(child, CANCEL_GRACE_S)
            raise


def _stop(child: subprocess.Popen, grace_s: float) -> None:
    import signal

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        if child.poll() is not None:
            break
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        try:
            child.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    try:  # whatever is left of the group (torchrun workers) goes too
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _write(run: ScriptRun, run_dir: Path, diff: Mapping[str, Any], metrics: dict | None, *, status: str, error: str | None, artifact: str | None = None, isolated: bool = False, note: str = "") -> ScriptOutcome:
    from p2pgolf.trainer.runner import _hardware

    result = {
        "bench": run.bench.id,
        "bench_name": run.bench.name,
        "base": script_base(run.sha),
        "diff": dict(diff),
        "tokenizer": run.tokenizer,
        "seed": int(run.seed),
        "budget_s": float(run.budget_s),
        "hw": _hardware(),
        "metrics": metrics,
        "artifact_sha256": artifact,
        "trainer": trainer_version(TRAINER_NAME),
        "status": status,
        "error": error,
        "parents": list(run.parents),
        "note": note[:80],
        # The record signed from this run takes its time from here (one record per run).
        "created_ms": int(time.time() * 1000),
        # A script reports no throughput p2pgolf could judge; the estimator reads train_tokens.
        "throughput": None,
    }
    assert tuple(result) == RESULT_KEYS
    write_json(run_dir / "result.json", result)
    return ScriptOutcome(run_dir=run_dir, result=result, metrics=metrics or {}, isolated=isolated)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"  # the bool(int(os.environ.get(...))) idiom
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

"""Spawning a proposer for one request: bounded in time, in output and in what it inherits.

Guarantees of `spawn`:
- it returns within about `timeout_s` (plus a few seconds to stop the child): a proposer that
  hangs is killed with its whole process group;
- at most `max_bytes` of its stdout are kept: one that writes more is killed at once and the
  request fails ("wrote more than N bytes");
- the child's environment is scrubbed: only PATH, locale and time zone, plus the variables
  whose names start with PROPOSER_ (the chat proposer's endpoint, model and key: set by the
  user for proposers) and those named in `pass_env`;
  HOME and TMPDIR point at an empty private directory that is removed afterwards, so nothing
  names the node's data directory or key file; its working directory is that directory too;
- stdin carries only the situation document; nothing of the node is callable from the child.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PASS_PREFIX = "PROPOSER_"
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
STDERR_KEEP = 2000  # characters of the proposer's stderr kept for the log


@dataclass(frozen=True)
class SpawnResult:
    """What one request gave: stdout (bounded), the seconds it took, and why it failed (or None)."""

    stdout: bytes
    seconds: float
    error: str | None
    stderr_tail: str = ""


def scrubbed_env(environ: Mapping[str, str], pass_env: Sequence[str], home: str) -> dict[str, str]:
    """The environment a proposer gets: KEEP_ENV, PROPOSER_* and `pass_env` from `environ` (never a
    P2PGOLF_* variable), HOME/TMPDIR = `home`."""
    names = [*KEEP_ENV, *pass_env, *(k for k in environ if k.startswith(PASS_PREFIX))]
    env = {k: environ[k] for k in names if k in environ and not k.startswith("P2PGOLF")}
    env.update(HOME=home, TMPDIR=home, PYTHONDONTWRITEBYTECODE="1")
    return env


def spawn(
    argv: Sequence[str],
    stdin: bytes,
    *,
    timeout_s: float,
    max_bytes: int,
    pass_env: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> SpawnResult:
    """Run `argv` once with `stdin`; see the module's guarantees."""
    started = time.monotonic()
    private = tempfile.mkdtemp(prefix="p2pgolf-proposer-")
    env = scrubbed_env(os.environ if environ is None else environ, pass_env, private)
    try:
        try:
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=private, env=env, start_new_session=True, close_fds=True,
            )  # fmt: skip
        except OSError as exc:
            return SpawnResult(b"", time.monotonic() - started, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        out = bytearray()
        err = bytearray()
        overflow = threading.Event()

        def feed() -> None:
            try:
                proc.stdin.write(stdin)
            except OSError:
                pass  # it stopped reading (or exited): its answer says the rest
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        def read_out() -> None:
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    return
                out.extend(chunk)
                if len(out) > max_bytes:
                    overflow.set()
                    _kill(proc)
                    return

        def read_err() -> None:
            while True:
                chunk = proc.stderr.read1(65536)
                if not chunk:
                    return
                if len(err) < STDERR_KEEP * 4:
                    err.extend(chunk)

        threads = [threading.Thread(target=f, daemon=True) for f in (feed, read_out, read_err)]
        for t in threads:
            t.start()
        error = None
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait(10)
            code = None
            error = f"no answer within {timeout_s:g} s; killed"
        for t in threads:
            t.join(5)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
        if overflow.is_set():
            error = f"wrote more than {max_bytes} bytes; killed"
        elif error is None and code != 0:
            error = f"exited with status {code}"
        tail = err.decode("utf-8", "replace")[-STDERR_KEEP:]
        return SpawnResult(bytes(out[: max_bytes]), time.monotonic() - started, error, tail)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the proposer's process group (it was started in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass

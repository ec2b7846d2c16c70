"""The control socket checks who connects: Linux by SO_PEERCRED (a real socket and a real
process of another user here), macOS and FreeBSD by LOCAL_PEERCRED's `struct xucred` (its
parsing and the getsockopt call it makes; on main only Linux was checked)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import trio

import p2pgolf.node.control as control
from p2pgolf.node.control import XUCRED, ControlError, parse_xucred, peer_uid, serve


def xucred(uid: int, version: int = 0, groups: tuple[int, ...] = (20, 12, 61)) -> bytes:
    return XUCRED.pack(version, uid, len(groups), *groups, *([0] * (16 - len(groups))))


def test_xucred_is_76_bytes_and_gives_its_uid():
    assert XUCRED.size == 76
    assert parse_xucred(xucred(501)) == 501


@pytest.mark.parametrize("data,named", [(xucred(501, version=1), "version 1"), (xucred(501)[:40], "40 bytes")])
def test_xucred_of_another_version_or_too_short_is_refused(data, named):
    with pytest.raises(ControlError, match=named):
        parse_xucred(data)


def test_on_macos_the_peer_uid_comes_from_local_peercred(monkeypatch):
    asked = []

    class Conn:  # the one syscall, as macOS answers it
        def getsockopt(self, level, option, size):
            asked.append((level, option, size))
            return xucred(501)

    monkeypatch.setattr(sys, "platform", "darwin")
    assert peer_uid(Conn()) == 501
    assert asked == [(0, 0x001, 76)]  # SOL_LOCAL, LOCAL_PEERCRED, sizeof(struct xucred)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PEERCRED is Linux's")
def test_on_linux_the_peer_uid_of_a_real_socket_is_ours():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.getuid()


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.getuid() != 0, reason="needs Linux and root to run a process as another user")
def test_another_user_is_refused_even_when_the_socket_file_lets_it_connect():
    class Handler:
        async def control(self, request: dict) -> dict:
            return {"ok": True, "status": "secret"}

    where = Path(tempfile.mkdtemp(prefix="p2pgolf-cred-", dir="/tmp"))  # pytest's tmp dirs are 0700
    where.chmod(0o755)
    path = where / "node.sock"
    started, box = threading.Event(), {}

    async def main():
        async with trio.open_nursery() as nursery:
            box["scope"], box["token"] = nursery.cancel_scope, trio.lowlevel.current_trio_token()
            await nursery.start(serve, path, Handler())
            path.chmod(0o666)  # the file mode no longer guards: only the credentials do
            started.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10)
    # The node answers a refused peer at once and closes, so the request may meet a closed pipe.
    client = "\n".join([
        "import socket, sys",
        "s = socket.socket(socket.AF_UNIX)",
        "s.connect(sys.argv[1])",
        "try:",
        "    s.sendall(b'{\"op\": \"status\"}\\n')",
        "except BrokenPipeError:",
        "    pass",
        "print(s.recv(65536).decode())",
    ])
    try:
        # the system python: the venv's may not be readable by another user
        python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        proc = subprocess.run([python, "-S", "-c", client, str(path)], user=65534, cwd="/", capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        reply = json.loads(proc.stdout)
        assert reply == {"ok": False, "error": "the control socket serves only the user who runs the node"}
        assert control.request(path, {"op": "status"})["status"] == "secret"  # we, its user, are served
    finally:
        trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
        thread.join(10)
        shutil.rmtree(where, ignore_errors=True)

"""The local control socket: how `p2pgolf status`, `peers` and `publish` talk to a running node.

A unix socket at `Home.control_socket`, created with mode 0600 (umask set around bind) and
checked again by peer credentials (Linux SO_PEERCRED, macOS and FreeBSD LOCAL_PEERCRED, the
`struct xucred` getpeereid reads): only the user who runs the node may use it; a peer whose
credentials cannot be read is refused. One JSON request line, one JSON reply line, then close:

    {"op": "status"}                      -> {"ok": true, "status": {...}}
    {"op": "publish", "records": [hex..]} -> {"ok": true, "results": [{"id", "verdict", "peers"}]}
    {"op": "stop", "abandon": false}      -> {"ok": true, "stopping": "...", "pid": N}
    anything else                         -> {"ok": false, "error": "..."}

Every read is bounded in size and time. A stale socket file left by a killed node is replaced;
a live one means another node already runs with this home, and starting is refused.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any, Protocol

import trio

log = logging.getLogger(__name__)

MAX_REQUEST = 32 * 1024 * 1024
REQUEST_TIMEOUT_S = 30.0


class ControlError(Exception):
    """No node answers on the socket, or it answered with an error."""


class NotRunning(ControlError):
    """No node is running with this home."""


class Handler(Protocol):
    async def control(self, request: dict) -> dict: ...


async def serve(path: Path, handler: Handler, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on `path` until cancelled, answering each connection with `handler.control`."""
    listener = await _bind(path)
    try:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                conn, _ = await listener.accept()
                nursery.start_soon(_answer, conn, handler)
    finally:
        listener.close()
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def request(path: Path, message: dict, *, timeout: float = REQUEST_TIMEOUT_S) -> dict:
    """Send one request to the node at `path` (blocking). NotRunning if none listens there."""
    if not path.exists():
        raise NotRunning(f"no node is running (no control socket at {path})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise NotRunning(f"no node is running (stale control socket at {path})") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ControlError("reply from the node is too large")
    except socket.timeout:
        raise ControlError(f"the node did not answer within {timeout:g} s") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("the node sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise ControlError("the node sent an unreadable reply")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "the node refused the request")))
    return reply


async def _bind(path: Path) -> trio.socket.SocketType:
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # left by a node that died
        else:
            raise ControlError(f"a node is already running with this home (control socket {path})")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is born 0600: no window where others may connect
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


async def _answer(conn: trio.socket.SocketType, handler: Handler) -> None:
    with conn:
        try:
            if not _same_user(conn):
                await _send(conn, {"ok": False, "error": "the control socket serves only the user who runs the node"})
                return
            with trio.fail_after(REQUEST_TIMEOUT_S):
                data = b""
                while not data.endswith(b"\n"):
                    chunk = await conn.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > MAX_REQUEST:
                        await _send(conn, {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"})
                        return
            try:
                message = json.loads(data)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                await _send(conn, {"ok": False, "error": "request must be one JSON object on one line"})
                return
            try:
                reply = await handler.control(message)
            except Exception as exc:
                log.exception("control request %r failed", message.get("op"))
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            await _send(conn, reply)
        except (trio.TooSlowError, OSError) as exc:
            log.debug("control connection ended: %s", exc)


async def _send(conn: trio.socket.SocketType, reply: dict) -> None:
    data = memoryview(json.dumps(reply).encode() + b"\n")
    with trio.fail_after(REQUEST_TIMEOUT_S):
        while data:
            sent = await conn.send(data)
            data = data[sent:]


# macOS and FreeBSD: getsockopt(SOL_LOCAL, LOCAL_PEERCRED) fills a `struct xucred` (sys/ucred.h):
# u_int cr_version (XUCRED_VERSION, 0); uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16],
# 76 bytes with the padding after cr_ngroups. It is what getpeereid(3) reads.
SOL_LOCAL = 0
LOCAL_PEERCRED = getattr(socket, "LOCAL_PEERCRED", 0x001)
XUCRED = struct.Struct("=IIh2x16I")
XUCRED_VERSION = 0


def parse_xucred(data: bytes) -> int:
    """The effective uid in a `struct xucred`; ControlError for one too short or of another version."""
    if len(data) < XUCRED.size:
        raise ControlError(f"peer credentials are {len(data)} bytes, not a struct xucred of {XUCRED.size}")
    version, uid, _ngroups, *_groups = XUCRED.unpack_from(data)
    if version != XUCRED_VERSION:
        raise ControlError(f"peer credentials have version {version}, not {XUCRED_VERSION}")
    return uid


def parse_ucred(data: bytes) -> int:
    """The uid in Linux's `struct ucred` (pid, uid, gid: three 32-bit ints)."""
    _pid, uid, _gid = struct.unpack("3i", data[: struct.calcsize("3i")])
    return uid


def peer_uid(conn: Any) -> int | None:
    """The uid of the process at the other end of a connected unix socket (Linux SO_PEERCRED,
    macOS and FreeBSD LOCAL_PEERCRED), or None where the OS offers neither."""
    if sys.platform.startswith("linux"):
        return parse_ucred(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if sys.platform == "darwin" or sys.platform.startswith("freebsd"):
        return parse_xucred(conn.getsockopt(SOL_LOCAL, LOCAL_PEERCRED, XUCRED.size))
    return None


def _same_user(conn: trio.socket.SocketType) -> bool:
    try:
        uid = peer_uid(conn)
    except (OSError, ControlError) as exc:
        log.warning("control socket: cannot read the peer's credentials (%s); refusing it", exc)
        return False
    return uid is None or uid == os.getuid()  # None: elsewhere the 0600 socket file is the guard

"""A real headless Chromium for tests, driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: NUL-terminated JSON on fds 3 and 4, no port, no websocket).

`find_chromium()` finds an installed Chromium, or returns None with the reason (a test never
installs system packages: README.md's Development section says how). `open_page(url)` loads a page with
the network enabled in the protocol, records every request the page makes, and evaluates
expressions in it. Chromium's own background traffic is cut off: a proxy that does not exist
and a host resolver that resolves nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> tuple[str | None, str]:
    """(path, "") or (None, why not)."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path, ""
    return None, "Chromium is not installed (on Debian or Ubuntu: apt-get update && apt-get install -y chromium tmux)"

class Page:
    """One tab of a headless Chromium, reached through the DevTools pipe."""

    def __init__(self, binary: str, timeout_s: float = 30.0, attempts: int = 2) -> None:
        self.timeout_s = timeout_s
        self.requests: list[str] = []
        for attempt in range(1, attempts + 1):
            self._launch(binary)
            try:
                self._open_tab()
                return
            except AssertionError as exc:
                # a Chromium that never answers its pipe (seen once on a loaded CI machine) is
                # stopped, by its own PID, and started once more on a fresh profile
                said = (Path(self._profile) / "stderr.log").read_bytes()[-400:].decode(errors="replace")
                self.close()
                if attempt == attempts:
                    raise AssertionError(f"{exc} ({attempts} launches); its stderr ended: {said!r}") from None

    def _launch(self, binary: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="p2pgolf-chromium-")
        self._log = open(Path(self._profile) / "stderr.log", "wb")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={self._profile}",
            "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip

        def fds() -> None:
            high_r, high_w = os.dup(to_browser_r) + 100, os.dup(from_browser_w) + 100  # out of the way of 3 and 4
            os.dup2(to_browser_r, high_r)
            os.dup2(from_browser_w, high_w)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        # fds 3 and 4 are set in the child just before exec (the pipe's two ends, as Chromium expects)
        self.proc = subprocess.Popen(args, preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)  # fmt: skip
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self._events: list[dict] = []

    def _open_tab(self) -> None:
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self._call("Network.enable", {}, session=True)
        self._call("Page.enable", {}, session=True)

    def load(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self._events.clear()
        self._call("Page.navigate", {"url": url}, session=True)
        self._wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (DevTools evaluation: not subject
        to the page's Content-Security-Policy)."""
        reply = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"evaluation failed: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def close(self) -> None:
        try:
            self._send({"id": 10_000, "method": "Browser.close"})
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=10)
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._log.close()
            shutil.rmtree(self._profile, ignore_errors=True)

    # --- protocol ----------------------------------------------------------------------

    def _send(self, message: dict) -> None:
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")

    def _call(self, method: str, params: dict, *, session: bool = False) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            msg = self._read(deadline)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise AssertionError(f"no answer to {method} within {self.timeout_s:g} s")

    def _wait_event(self, name: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        for event in self._events:
            if event.get("method") == name:
                return event
        while time.monotonic() < deadline:
            msg = self._read(deadline)
            if msg.get("method") == name:
                return msg
        raise AssertionError(f"no {name} within {self.timeout_s:g} s")

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise AssertionError("Chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise AssertionError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        msg = json.loads(raw)
        if msg.get("method") == "Network.requestWillBeSent":
            self.requests.append(msg["params"]["request"]["url"])
        if "method" in msg:
            self._events.append(msg)
        return msg

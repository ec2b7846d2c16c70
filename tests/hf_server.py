"""A loopback stand-in for the Hugging Face Hub's file endpoints, for download tests.

It answers `HEAD`/`GET /datasets/{repo}/resolve/{revision}/{path}` as the Hub does for the
headers huggingface_hub reads: small files with 200, `ETag`, `X-Repo-Commit` and
`Content-Length`; large ("LFS") files with a 302 to a second origin (the "CDN") carrying
`X-Linked-Etag` (the sha256), `X-Linked-Size` and `X-Repo-Commit`. The CDN honours
`Range: bytes=N-` with 206 and `Content-Range`. Unknown files get 404 with
`X-Error-Code: EntryNotFound`, unknown repos `RepoNotFound`. Faults for tests: `drop_after`
cuts the next GET of a file after N body bytes (the connection closes mid-transfer);
`throttle_s` slows bodies down so a test can stop a download part-way. Every
request is logged as (method, path, Range header). Both servers listen on 127.0.0.1 only, on
free ports, in daemon threads; `close()` stops them.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_MIN_BYTES = 1024  # files at least this big are served like LFS files: redirect to the CDN
_RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")


@dataclass
class FakeHub:
    repo_id: str
    files: dict[str, bytes]
    drop_after: dict[str, int] = field(default_factory=dict)
    throttle_s: float = 0.0  # pause after each 1 KiB of a file body past `throttle_from` bytes
    throttle_from: int = 0
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._hub = _serve(self, cdn=False)
        self._cdn = _serve(self, cdn=True)
        self.endpoint = f"http://127.0.0.1:{self._hub.server_address[1]}"
        self.cdn_endpoint = f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def close(self) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def by_sha(self, sha: str) -> tuple[str, bytes] | None:
        for path, data in self.files.items():
            if hashlib.sha256(data).hexdigest() == sha:
                return path, data
        return None

    def log(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))

    def take_drop(self, path: str) -> int | None:
        with self._lock:
            return self.drop_after.pop(path, None)


def _serve(hub: FakeHub, *, cdn: bool) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(body=True)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _answer(self, *, body: bool) -> None:
            hub.log(self.command, self.path, self.headers.get("Range"))
            if cdn:
                m = _CDN.match(self.path)
                found = hub.by_sha(m["sha"]) if m else None
                if found is None:
                    return self._error(404, "EntryNotFound")
                return self._send_file(found[0], found[1], body=body, headers={})
            m = _RESOLVE.match(self.path)
            if m is None:
                return self._error(404, "RepoNotFound")
            if m["repo"] != hub.repo_id:
                return self._error(404, "RepoNotFound")
            if m["rev"] != "main" and m["rev"] != COMMIT:
                return self._error(404, "RevisionNotFound")
            path = m["path"]
            if path not in hub.files:
                return self._error(404, "EntryNotFound")
            data = hub.files[path]
            if len(data) >= LFS_MIN_BYTES:
                sha = hashlib.sha256(data).hexdigest()
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn_endpoint}/cdn/{sha}")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", '"git-pointer-etag"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            etag = hashlib.sha1(data).hexdigest()
            self._send_file(path, data, body=body, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'})

        def _send_file(self, path: str, data: bytes, *, body: bool, headers: dict[str, str]) -> None:
            start = 0
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                if m is None or int(m[1]) >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = int(m[1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            drop = hub.take_drop(path)
            payload = data[start:]
            if drop is not None:
                self.wfile.write(payload[:drop])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # cut the transfer mid-body, as a network fault would
                return
            if hub.throttle_s:
                try:
                    fast = max(0, hub.throttle_from - start)
                    self.wfile.write(payload[:fast])
                    for i in range(fast, len(payload), 1024):
                        self.wfile.write(payload[i : i + 1024])
                        self.wfile.flush()
                        time.sleep(hub.throttle_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away mid-transfer: what the test wanted
                return
            self.wfile.write(payload)

        def _error(self, status: int, code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", f"{code} (fake hub)")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-hub", daemon=True).start()
    return server

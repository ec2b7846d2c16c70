"""The blob exchange: fetch artifacts and scripts from peers by SHA-256, and serve the ones held.

Protocol `/p2pgolf/blobs/1.0.0` on a raw libp2p stream (Yamux), framed as sync's frames (a 4-byte
big-endian length and a canonical msgpack map, node.sync.read_frame/write_frame). The client sends
one request at a time and reads one reply:

    {"op": "has", "sha": 32 bytes}                           -> {"size": int | null}
    {"op": "get", "sha": 32 bytes, "offset": int, "length": int}
                                                             -> {"data": bytes}  (exactly `length`
                                                                bytes, fewer only at the end)
    anything wrong                                           -> {"error": "..."}, stream closed

API (used by the node, `p2pgolf pool fetch`, `p2pgolf verify`, the research loop and the script
store):

    exchange = BlobExchange(host, store, settings)          # store: pool.blobs.BlobStore
    path = await exchange.fetch(sha, kind="artifact", max_bytes=N, peers=[peer_id, ...],
                                timeout_s=120.0)            # -> Path of the verified blob
    holders = await exchange.holders(sha, peers)             # -> [(peer_id, size), ...]
    BlobServer(store, settings).attach(host)                 # serve what `store` holds

`fetch` returns at once if the blob is held (re-hashed), else asks `peers` (default: every
connected peer, in the order given, so a caller lists the record's author first) who holds it,
and downloads it in chunks of `settings.chunk_bytes` from one holder after another until one
transfer completes and hashes to `sha`. It raises BlobFetchError, naming each peer and what
went wrong, if none does within `timeout_s`.

Guarantees:
- Nothing is used before it is verified: chunks go to a partial file, and only a whole blob whose
  SHA-256 equals `sha` enters the store (pool.blobs.BlobStore.commit_partial); a tampered transfer
  is discarded and the next holder tried; a truncated one (the peer went away) is kept and
  resumed from where it stopped, from the next holder or the next fetch.
- Size-capped: a holder offering more than min(max_bytes, the kind's cap) bytes is refused before
  a byte moves, and no reply may carry more than was asked for.
- Every network wait has a timeout; a holder must deliver each chunk at `min_bytes_per_s` or
  better (a peer serving at a crawl is dropped for the next one, keeping what it sent), and the
  whole fetch ends by its deadline. One fetch runs per digest at a time; others wait for it.
- The server is rate-limited per peer (`serve_bytes_per_s`, `serve_burst`: it waits, within a
  request's timeout, for the peer's byte budget), serves at most `max_streams` streams at once,
  re-hashes a blob before announcing it (once per version of its file), and never raises into
  libp2p.

Why not py-libp2p's Bitswap (0.8.1, libp2p.bitswap): it works on loopback (16,000,000 random
bytes in 0.5-1.4 s on the 2-core dev machine, against 0.2-0.4 s here; benchmarks/verify_claims.py
measures both), but it names blocks of at most 512 KiB by their CIDs in a dag-pb tree, while our
records name an artifact by the SHA-256 of the whole file (mapping one to the other needs a
protocol of our own anyway, and changing the record is a wire change); its fetch has no total
size cap, its server no per-peer rate limit, its block store lives in memory, and its disconnect
notifee raised "Nursery is closed to new arrivals" at every shutdown we measured.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pgolf.node.stream_limits import remote_peer as _remote_peer
from p2pgolf.node.sync import SyncError, _close, read_frame, write_frame
from p2pgolf.protocol import canonical
from p2pgolf.pool.blobs import BlobError, BlobStore, check_sha

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

log = logging.getLogger(__name__)

BLOB_PROTOCOL = "/p2pgolf/blobs/1.0.0"
MAX_CHUNK = 1 << 20  # a server serves any get of up to this many bytes; a client asks no more
FRAME_BOUNDS = canonical.Bounds(max_items=256, max_container=64, max_str=1024, max_bin=MAX_CHUNK)  # a blob frame is a small map


@dataclass(frozen=True)
class ExchangeSettings:
    """Sizes, rates and timeouts of the blob exchange (both sides)."""

    chunk_bytes: int = MAX_CHUNK  # asked for per request
    min_bytes_per_s: float = 256 * 1024  # a holder slower than this per chunk is dropped
    open_timeout_s: float = 10.0
    has_timeout_s: float = 5.0
    fetch_timeout_s: float = 300.0  # default deadline of a whole fetch
    serve_bytes_per_s: float = 64 * 1024 * 1024  # per peer
    serve_burst: int = 32 * 1024 * 1024
    max_streams: int = 8  # served at once, all peers together
    idle_timeout_s: float = 30.0  # a server waits this long for the next request

    def __post_init__(self) -> None:
        if not 1024 <= self.chunk_bytes <= MAX_CHUNK:
            raise ValueError(f"chunk_bytes={self.chunk_bytes} is outside [1024, {MAX_CHUNK}]")
        for name in ("min_bytes_per_s", "open_timeout_s", "has_timeout_s", "fetch_timeout_s", "serve_bytes_per_s", "idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.serve_burst < self.chunk_bytes:
            raise ValueError(f"serve_burst={self.serve_burst} must be at least chunk_bytes={self.chunk_bytes}")

    @property
    def chunk_timeout_s(self) -> float:
        """How long one chunk may take: a chunk at the slowest rate a holder may serve, or 2 s."""
        return max(2.0, self.chunk_bytes / self.min_bytes_per_s)


class BlobFetchError(Exception):
    """No peer delivered the blob (the message names each peer tried and why it failed)."""


class _PeerFailed(Exception):
    pass


class _ByteBucket:
    """`rate` bytes per second up to `burst`; `wait_for(n)` is how long until n are available."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def wait_for(self, n: int) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate

    def spend(self, n: int) -> None:
        self.tokens -= n


class BlobServer:
    """Answers blob requests from peers out of a BlobStore."""

    def __init__(self, store: BlobStore, settings: ExchangeSettings = ExchangeSettings()) -> None:
        self.store = store
        self.settings = settings
        self.served_bytes = 0
        self.served_blobs = 0
        self._buckets: dict[str, _ByteBucket] = {}
        self._verified: dict[str, tuple[int, int]] = {}  # sha -> (size, mtime_ns) last hashed
        self._streams = trio.Semaphore(settings.max_streams)

    def attach(self, host: "IHost", guard: Any = None) -> None:
        """Serve on `host`; `guard` (node.stream_limits.StreamSlots.guard) bounds streams per peer."""
        from libp2p.custom_types import TProtocol

        host.set_stream_handler(TProtocol(BLOB_PROTOCOL), guard(self.handle) if guard is not None else self.handle)

    async def handle(self, stream: Any) -> None:
        """Serve one stream until the peer closes it, breaks a rule, or idles too long."""
        peer = _remote_peer(stream)
        try:
            if self._streams.value == 0:
                await _write_timed(stream, {"error": "busy: too many blob transfers at once; try later"}, self.settings)
                return
            async with self._streams:
                while True:
                    with trio.move_on_after(self.settings.idle_timeout_s):
                        request = await read_frame(stream, allow_eof=True, bounds=FRAME_BOUNDS)
                        if request is None:
                            return
                        try:
                            reply = await self._answer(request, peer)
                        except (BlobError, ValueError) as exc:
                            await _write_timed(stream, {"error": str(exc)[:300]}, self.settings)
                            return
                        await _write_timed(stream, reply, self.settings)
                        continue
                    return  # idle
        except (SyncError, trio.TooSlowError) as exc:
            log.debug("blob stream from %s ended: %s", peer, exc)
        except Exception:
            log.exception("blob server error with %s", peer)
        finally:
            await _close(stream)

    async def _answer(self, request: Any, peer: str) -> dict:
        if not isinstance(request, dict):
            raise ValueError("request must be a map")
        op = request.get("op")
        sha = _sha_of(request.get("sha"))
        if op == "has":
            return {"size": await self._verified_size(sha)}
        if op == "get":
            offset, length = request.get("offset"), request.get("length")
            if type(offset) is not int or type(length) is not int or offset < 0 or not 0 < length <= MAX_CHUNK:
                raise ValueError(f"get needs offset >= 0 and 0 < length <= {MAX_CHUNK}")
            size = self.store.size(sha)
            if size is None:
                raise BlobError(f"blob {sha[:12]} is not held here")
            if offset >= size and size > 0:
                raise ValueError(f"offset {offset} is beyond the blob's {size} bytes")
            data = await self._throttled_read(sha, offset, min(length, size - offset), peer)
            self.served_bytes += len(data)
            return {"data": data}
        raise ValueError(f"unknown blob op {op!r}; expected has or get")

    async def _verified_size(self, sha: str) -> int | None:
        """The blob's size if it is held and hashes to its name. The hash is done once per file
        version (size and mtime), so repeated asks cost a stat, not a re-hash."""
        path = self.store.path(sha)
        if path is None:
            return None
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if self._verified.get(sha) != stamp:
            try:
                path = await trio.to_thread.run_sync(self.store.verified_path, sha)
            except BlobError:
                self._verified.pop(sha, None)
                return None
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            self._verified[sha] = stamp
        return stamp[0]

    async def _throttled_read(self, sha: str, offset: int, length: int, peer: str) -> bytes:
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = _ByteBucket(self.settings.serve_bytes_per_s, self.settings.serve_burst)
        wait = bucket.wait_for(length)
        if wait > 0:
            await trio.sleep(wait)  # the peer's share of our upload; its own chunk deadline bounds it
        bucket.spend(length)
        data = self.read_chunk(sha, offset, length)
        if offset + len(data) == self.store.size(sha):
            self.served_blobs += 1
        return data

    def read_chunk(self, sha: str, offset: int, length: int) -> bytes:
        """The bytes [offset, offset+length) of a held blob (a test overrides this to misbehave)."""
        path = self.store.path(sha)
        if path is None:
            raise BlobError(f"blob {sha[:12]} is not held here")
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)


class BlobExchange:
    """Fetches blobs from peers into a BlobStore."""

    def __init__(self, host: "IHost", store: BlobStore, settings: ExchangeSettings = ExchangeSettings()) -> None:
        self.host = host
        self.store = store
        self.settings = settings
        self.fetched_bytes = 0
        self._locks: dict[str, trio.Lock] = defaultdict(trio.Lock)

    async def fetch(self, sha: str, *, kind: str = "artifact", max_bytes: int | None = None, peers: list[str] | None = None, timeout_s: float | None = None) -> Path:
        """The path of blob `sha`, held already or fetched and verified. BlobFetchError if no
        peer delivers it within `timeout_s`; BlobError for a malformed digest or kind."""
        check_sha(sha)
        cap = self.store.cap(kind) if max_bytes is None else min(int(max_bytes), self.store.cap(kind))
        deadline = trio.current_time() + (self.settings.fetch_timeout_s if timeout_s is None else timeout_s)
        async with self._locks[sha]:
            try:
                return await trio.to_thread.run_sync(self.store.verified_path, sha)
            except BlobError:
                pass
            candidates = self._peers(peers)
            if not candidates:
                raise BlobFetchError(f"cannot fetch {kind} {sha[:12]}: no peer is connected")
            failures: list[str] = []
            holders: list[tuple[str, int]] = []
            with trio.move_on_at(deadline):
                holders = await self.holders(sha, candidates)
            held_by = {p for p, _ in holders}
            failures += [f"{p[-8:]}: does not hold it" for p in candidates if p not in held_by]
            for peer, size in holders:
                if size > cap:
                    failures.append(f"{peer[-8:]}: offers {size:,} bytes, over the cap of {cap:,}")
                    continue
                if trio.current_time() >= deadline:
                    failures.append(f"{peer[-8:]}: not tried, the fetch's deadline passed")
                    continue
                try:
                    return await self._fetch_from(peer, sha, size, kind, deadline)
                except _PeerFailed as exc:
                    log.info("blob %s from %s failed: %s", sha[:12], peer, exc)
                    failures.append(f"{peer[-8:]}: {exc}")
            raise BlobFetchError(f"could not fetch {kind} {sha[:12]}: " + ("; ".join(failures) or "no peer answered in time"))

    async def holders(self, sha: str, peers: list[str]) -> list[tuple[str, int]]:
        """The peers of `peers` that say they hold `sha`, with the size they announce, in the
        order given. Peers that fail or do not answer within has_timeout_s are left out."""
        answers: dict[str, int] = {}

        async def ask(peer: str) -> None:
            with trio.move_on_after(self.settings.has_timeout_s):
                try:
                    stream = await self._open(peer)
                except _PeerFailed:
                    return
                try:
                    reply = await _request(stream, {"op": "has", "sha": bytes.fromhex(sha)})
                    size = reply.get("size")
                    if type(size) is int and size >= 0:
                        answers[peer] = size
                except _PeerFailed:
                    pass
                finally:
                    await _close_shielded(stream)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
        return [(p, answers[p]) for p in peers if p in answers]

    def _peers(self, peers: list[str] | None) -> list[str]:
        if peers is None:
            return sorted(p.to_base58() for p in self.host.get_connected_peers())
        return list(dict.fromkeys(peers))

    async def _fetch_from(self, peer: str, sha: str, size: int, kind: str, deadline: float) -> Path:
        offset = self.store.partial_size(sha)
        if offset > size:  # left by a peer that announced another size: start over
            self.store.discard_partial(sha)
            offset = 0
        with trio.move_on_at(deadline) as scope:
            stream = await self._open(peer)
            try:
                with open(self.store.partial(sha), "ab") as out:
                    while offset < size:
                        length = min(self.settings.chunk_bytes, size - offset)
                        with trio.move_on_after(self.settings.chunk_timeout_s) as chunk_scope:
                            reply = await _request(stream, {"op": "get", "sha": bytes.fromhex(sha), "offset": offset, "length": length})
                        if chunk_scope.cancelled_caught:
                            raise _PeerFailed(f"too slow: {length:,} bytes not delivered in {self.settings.chunk_timeout_s:g} s (kept {offset:,} bytes to resume)")
                        data = reply.get("data")
                        if type(data) is not bytes or len(data) != length:
                            got = len(data) if type(data) is bytes else type(data).__name__
                            raise _PeerFailed(f"sent {got} bytes at offset {offset:,} where {length:,} were asked for")
                        out.write(data)
                        out.flush()
                        offset += length
                        self.fetched_bytes += length
            finally:
                await _close_shielded(stream)
        if scope.cancelled_caught:
            raise _PeerFailed(f"the fetch's deadline passed at {offset:,} of {size:,} bytes (kept to resume)")
        try:
            return await trio.to_thread.run_sync(lambda: self.store.commit_partial(sha, kind=kind))
        except BlobError as exc:
            raise _PeerFailed(str(exc)) from None

    async def _open(self, peer: str) -> Any:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        try:
            with trio.fail_after(self.settings.open_timeout_s):
                return await self.host.new_stream(ID.from_base58(peer), [TProtocol(BLOB_PROTOCOL)])
        except trio.TooSlowError:
            raise _PeerFailed("opening a blob stream timed out") from None
        except Exception as exc:
            raise _PeerFailed(f"cannot open a blob stream: {exc}") from None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _request(stream: Any, message: dict) -> dict:
    try:
        await write_frame(stream, message)
        reply = await read_frame(stream, bounds=FRAME_BOUNDS)
    except SyncError as exc:
        raise _PeerFailed(str(exc)) from None
    if not isinstance(reply, dict):
        raise _PeerFailed("reply is not a map")
    if "error" in reply:
        raise _PeerFailed(f"refused: {str(reply['error'])[:200]}")
    return reply


async def _close_shielded(stream: Any) -> None:
    """Close a stream even when the wait around it was cancelled (bounded by _close's 2 s)."""
    with trio.CancelScope(shield=True):
        await _close(stream)


async def _write_timed(stream: Any, message: dict, settings: ExchangeSettings) -> None:
    with trio.fail_after(max(settings.chunk_timeout_s, 10.0)):
        await write_frame(stream, message)


def _sha_of(value: Any) -> str:
    if type(value) is not bytes or len(value) != 32:
        raise ValueError("sha must be 32 bytes")
    return value.hex()

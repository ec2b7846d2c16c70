"""Sync: a node fetches every record it lacks from a peer, by comparing summaries.

Protocol `/p2pgolf/sync/1.1.0` on a raw libp2p stream. Each frame is a 4-byte big-endian length
and a canonical msgpack map; the client sends requests one at a time and reads one reply each:

    {"op": "summary", "bench": hex, "after": ms}  -> {"buckets": [[start_ms, count, digest_hex], ...], "more": bool}
    {"op": "ids", "bench": hex, "starts": [..]}   -> {"ids": [32-byte id, ...]}  (hour buckets)
    {"op": "get", "ids": [32-byte id, ...]}       -> {"records": [envelope bytes, ...]}
    {"op": "have", "ids": [32-byte id, ...]}      -> {"missing": [32-byte id, ...]}
    anything wrong                                -> {"error": "message"} and the stream is closed

`summary` gives at most MAX_SUMMARY_BUCKETS buckets starting after `after` (optional; -1: from
the first) with `more` true when there are others, so a reply is at most ~42 KB whatever the
pool holds. The client asks only for the ids of hour buckets whose (count, digest) differ, at
most MAX_IDS_REPLY ids' worth per request (it knows the counts), then only for the records it
lacks, and accepts only records whose ids it asked for.
Guarantees: every frame is bounded before it is decoded (bytes, then objects, items per
container, string sizes and nesting: `FRAME_BOUNDS`), every wait has a timeout and a whole sync
has a deadline (`SYNC_DEADLINE_S`); records that arrive by sync pass the same admission path as
gossip (node/limits.py: ban, rate, verification, storage); a peer may make at most
`Limits.sync_requests_per_s` requests per second and hold `Limits.max_streams_per_peer` streams;
the server never raises into libp2p. Large syncs verify in worker processes (node/verify_pool.py).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from p2pgolf.node.limits import FETCHED, Admission, Verdict
from p2pgolf.node.stream_limits import StreamSlots, remote_peer
from p2pgolf.node.verify_pool import verify_batch, warm
from p2pgolf.protocol import canonical
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.signing import MAX_RECORD_BYTES

if TYPE_CHECKING:  # pragma: no cover
    from libp2p.abc import IHost

log = logging.getLogger(__name__)

SYNC_PROTOCOL = "/p2pgolf/sync/1.1.0"
MAX_FRAME = 8 * 1024 * 1024
MAX_IDS_REPLY = 65_536  # ids in one reply (2.2 MB of frame)
MAX_STARTS = 2_000  # buckets asked for in one request
MAX_GET = 256  # records asked for in one request (at most 4 MiB of envelopes)
MAX_SUMMARY_BUCKETS = 512  # buckets in one summary reply (~42 KB)
MAX_BUCKETS = 100_000  # buckets a client reads from one peer in all
FRAME_BOUNDS = canonical.Bounds(max_items=MAX_IDS_REPLY + 64, max_container=MAX_IDS_REPLY, max_str=1024, max_bin=MAX_RECORD_BYTES)
REQUEST_TIMEOUT_S = 10.0  # one request and its reply
IDLE_TIMEOUT_S = 30.0  # a server waits this long for the next request
OPEN_TIMEOUT_S = 10.0
SYNC_DEADLINE_S = 120.0  # one whole sync of one benchmark with one peer
BUCKET_MS = 3_600_000  # the store's precomputed summary buckets
VERIFY_PARALLEL = 8  # batches being verified at once: enough queued (2,048 records) that the verifying processes keep working while the loop stores a transaction


class SyncError(Exception):
    """The peer broke the protocol, timed out, or went away."""


@dataclass
class SyncReport:
    """What one sync with one peer moved."""

    peer: str
    bench: str
    buckets_differing: int = 0
    ids_compared: int = 0
    fetched: int = 0
    expected: int = 0  # records the peer's summary says we lack (an estimate: buckets may overlap)
    verdicts: dict[str, int] = field(default_factory=dict)

    @property
    def added(self) -> int:
        return self.verdicts.get(Verdict.ADDED.value, 0)


class SyncServer:
    """Answers sync requests from peers out of our pool."""

    def __init__(self, store: Any, admission: Admission, bench_ids: set[str] | frozenset[str], slots: StreamSlots | None = None) -> None:
        self.store = store
        self.admission = admission
        self.bench_ids = frozenset(bench_ids)
        self.slots = slots or StreamSlots(admission.limits.max_streams_per_peer)
        self.served_records = 0
        self.requests = 0

    def attach(self, host: "IHost") -> None:
        from libp2p.custom_types import TProtocol

        host.set_stream_handler(TProtocol(SYNC_PROTOCOL), self.slots.guard(self.handle))

    async def handle(self, stream: Any) -> None:
        """Serve one stream until the peer closes it, breaks a rule, or idles too long."""
        peer = remote_peer(stream)
        limiter = self.admission.limiter
        try:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT_S):
                    request = await read_frame(stream, allow_eof=True)
                    if request is None:
                        return
                    if limiter.is_banned(peer) or not limiter.allow_request(peer):
                        await _write_timed(stream, {"error": "too many requests; slow down"})
                        return
                    self.requests += 1
                    try:
                        reply = self._answer(request)
                    except ProtocolError as exc:
                        await _write_timed(stream, {"error": str(exc)[:200]})
                        return
                    await _write_timed(stream, reply)
                    continue
                return  # idle
        except (SyncError, trio.TooSlowError) as exc:
            log.debug("sync stream from %s ended: %s", peer, exc)
        except Exception:
            log.exception("sync server error with %s", peer)
        finally:
            await _close(stream)

    def _answer(self, request: Any) -> dict:
        if not isinstance(request, dict):
            raise ProtocolError("request must be a map")
        op = request.get("op")
        if op == "summary":
            bench = self._bench(request)
            after = request.get("after", -1)
            if type(after) is not int:
                raise ProtocolError("must be an integer (milliseconds)", "after")
            buckets = [b for b in self.store.summary(bench) if b.start_ms > after]
            page = buckets[:MAX_SUMMARY_BUCKETS]
            return {"buckets": [[b.start_ms, b.count, b.digest] for b in page], "more": len(buckets) > len(page)}
        if op == "ids":
            bench = self._bench(request)
            starts = _int_list(request.get("starts"), MAX_STARTS, "starts")
            ids: list[bytes] = []
            for start in starts:
                ids.extend(bytes.fromhex(i) for i in self.store.ids_between(bench, start, start + BUCKET_MS))
                if len(ids) > MAX_IDS_REPLY:
                    raise ProtocolError(f"more than {MAX_IDS_REPLY} ids asked for at once; ask for fewer buckets")
            return {"ids": ids}
        if op == "get":
            wanted = _id_list(request.get("ids"), MAX_GET)
            records = self.store.raw_many(wanted)
            self.served_records += len(records)
            return {"records": records}
        if op == "have":
            wanted = _id_list(request.get("ids"), MAX_GET)
            return {"missing": [bytes.fromhex(i) for i in self.store.missing(wanted)]}
        raise ProtocolError(f"unknown sync op {op!r}")

    def _bench(self, request: dict) -> str:
        bench = request.get("bench")
        if not isinstance(bench, str) or bench not in self.bench_ids:
            raise ProtocolError("this node does not serve that benchmark", "bench")
        return bench


async def sync_with(host: "IHost", peer: str, bench: str, store: Any, admission: Admission, report: SyncReport | None = None, *, deadline_s: float | None = None) -> SyncReport:
    """Fetch from `peer` every record of `bench` that our pool lacks, within `deadline_s`
    (default SYNC_DEADLINE_S).
    Raises SyncError. `report` (the caller's, else a new one) is filled in as records are
    stored, so a caller can show a sync in progress and count what a sync that failed half-way
    still added."""
    report = report if report is not None else SyncReport(peer=peer, bench=bench)
    deadline_s = SYNC_DEADLINE_S if deadline_s is None else deadline_s
    try:
        with trio.fail_after(deadline_s):
            await _sync(host, peer, bench, store, admission, report)
    except trio.TooSlowError:
        raise SyncError(f"sync with {peer} did not finish within {deadline_s:g} s") from None
    return report


async def _sync(host: "IHost", peer: str, bench: str, store: Any, admission: Admission, report: SyncReport) -> None:
    if admission.limiter.is_banned(peer):
        raise SyncError(f"{peer} is shut out for now")
    stream = await open_sync_stream(host, peer)
    try:
        remote = await _remote_summary(stream, bench)
        local = {b.start_ms: (b.count, b.digest) for b in store.summary(bench)}
        differing = [start for start, value in remote.items() if local.get(start) != value]
        report.buckets_differing = len(differing)
        report.expected = sum(max(0, remote[s][0] - local.get(s, (0, ""))[0]) for s in differing)
        # A pipeline: fetching, verifying (whole batches, in worker processes for a large sync)
        # and storing (trio's thread) all overlap, so no stage waits for another to finish a
        # batch unless its queue is full or empty.
        send, receive = trio.open_memory_channel[tuple](VERIFY_PARALLEL)
        send_decoded, receive_decoded = trio.open_memory_channel[tuple](VERIFY_PARALLEL)
        failure: SyncError | None = None
        in_processes = report.expected > 4 * MAX_GET
        if in_processes:
            warm()
        async with trio.open_nursery() as nursery:
            async with receive, send_decoded:
                for _ in range(VERIFY_PARALLEL):
                    nursery.start_soon(_verify_fetched, receive.clone(), send_decoded.clone(), in_processes)
            nursery.start_soon(_admit_fetched, receive_decoded, report, admission, peer, STORE_WAIT_S if in_processes else 0.0)
            try:
                async with send:
                    for starts in _id_requests(differing, remote):
                        reply = await request(stream, {"op": "ids", "bench": bench, "starts": starts})
                        ids = _id_list(reply.get("ids"), MAX_IDS_REPLY)
                        report.ids_compared += len(ids)
                        lacking = store.missing(ids)
                        for j in range(0, len(lacking), MAX_GET):
                            chunk = lacking[j : j + MAX_GET]
                            reply = await request(stream, {"op": "get", "ids": [bytes.fromhex(x) for x in chunk]})
                            records = reply.get("records")
                            if not isinstance(records, list) or len(records) > len(chunk) or not all(type(r) is bytes for r in records):
                                raise SyncError("malformed get reply")
                            report.fetched += len(records)
                            passed = admission.screen(records, peer, path=FETCHED, tally=_Tally(report))
                            if passed:
                                await send.send((passed, frozenset(chunk)))
                            if len(passed) < len(records):
                                raise SyncError(f"{peer} is over its rate or shut out; stopping this sync")
            except SyncError as exc:
                failure = exc  # raised below, bare: a nursery would wrap it in an ExceptionGroup
        if failure is not None:
            raise failure
    finally:
        await _close(stream)


async def _remote_summary(stream: Any, bench: str) -> dict[int, tuple[int, str]]:
    """Every bucket the peer has for `bench`, page by page (at most MAX_BUCKETS in all)."""
    remote: dict[int, tuple[int, str]] = {}
    after = -1
    while True:
        reply = await request(stream, {"op": "summary", "bench": bench, "after": after})
        page = _buckets(reply)
        if any(start <= after for start in page):
            raise SyncError("summary page goes backwards")
        remote.update(page)
        if len(remote) > MAX_BUCKETS:
            raise SyncError(f"peer has more than {MAX_BUCKETS} buckets")
        if reply.get("more") is not True or not page:
            return remote
        after = max(page)


def _id_requests(differing: list[int], remote: dict[int, tuple[int, str]]) -> list[list[int]]:
    """`differing` cut into requests of at most MAX_STARTS buckets and (by the peer's own counts)
    at most MAX_IDS_REPLY ids each."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for start in differing:
        n = remote[start][0]
        if current and (len(current) >= MAX_STARTS or total + n > MAX_IDS_REPLY):
            out.append(current)
            current, total = [], 0
        current.append(start)
        total += n
    if current:
        out.append(current)
    return out


class _Tally(dict):
    """A verdict tally that lands in a SyncReport's counts."""

    def __init__(self, report: SyncReport) -> None:
        super().__init__({v: 0 for v in Verdict})
        self.report = report

    def __setitem__(self, verdict: Verdict, n: int) -> None:
        added = n - self.get(verdict, 0)
        super().__setitem__(verdict, n)
        if added:
            self.report.verdicts[verdict.value] = self.report.verdicts.get(verdict.value, 0) + added


async def _verify_fetched(receive: Any, send: Any, in_processes: bool) -> None:
    async with receive, send:
        async for records, asked in receive:
            decoded = await verify_batch(records, in_processes=in_processes)
            # a record we did not ask for is not taken, however valid: the peer chose what to send
            await send.send([d if d is None or d.id in asked else None for d in decoded])


STORE_BATCH = 4096  # verified records stored per transaction (each commit costs ~10 ms, whatever its size)
STORE_WAIT_S = 0.25  # in a large sync, how long a batch waits for more verified records to join its transaction


async def _admit_fetched(receive: Any, report: SyncReport, admission: Admission, peer: str, wait_s: float) -> None:
    """Store what is verified, in transactions of up to STORE_BATCH records: whatever is already
    verified joins one, and in a large sync (`wait_s` > 0) what is verified within `wait_s` too
    (a small sync stores at once, as a record gossiped meanwhile would be)."""
    async with receive:
        async for decoded in receive:
            with trio.move_on_after(wait_s):
                while len(decoded) < STORE_BATCH:
                    try:
                        decoded = decoded + (await receive.receive() if wait_s > 0 else receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
            # a large sync stores in a worker thread: the loop goes on fetching and feeding the verifiers
            tally = await admission.admit_decoded_in_thread(decoded, peer) if wait_s > 0 else admission.admit_decoded(decoded, peer)
            for verdict, n in tally.items():
                if n:
                    report.verdicts[verdict.value] = report.verdicts.get(verdict.value, 0) + n


async def peer_lacks(host: "IHost", peer: str, ids: list[str]) -> list[str]:
    """Which of `ids` (at most MAX_GET) `peer` does not hold. Raises SyncError."""
    stream = await open_sync_stream(host, peer)
    try:
        reply = await request(stream, {"op": "have", "ids": [bytes.fromhex(i) for i in ids[:MAX_GET]]})
        return _id_list(reply.get("missing"), MAX_GET)
    finally:
        await _close(stream)


async def open_sync_stream(host: "IHost", peer: str) -> Any:
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    try:
        with trio.fail_after(OPEN_TIMEOUT_S):
            return await host.new_stream(ID.from_base58(peer), [TProtocol(SYNC_PROTOCOL)])
    except trio.TooSlowError:
        raise SyncError(f"opening a sync stream to {peer} timed out") from None
    except Exception as exc:
        raise SyncError(f"cannot open a sync stream to {peer}: {exc}") from None


async def request(stream: Any, message: dict) -> dict:
    """Send one request and read its reply, within REQUEST_TIMEOUT_S. Raises SyncError."""
    try:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            await write_frame(stream, message)
            reply = await read_frame(stream)
    except trio.TooSlowError:
        raise SyncError(f"{message.get('op')} request timed out") from None
    if not isinstance(reply, dict):
        raise SyncError("reply is not a map")
    if "error" in reply:
        raise SyncError(f"peer refused: {str(reply['error'])[:200]}")
    return reply


async def write_frame(stream: Any, message: dict) -> None:
    data = canonical.encode(message)
    if len(data) > MAX_FRAME:
        raise SyncError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    try:
        await stream.write(struct.pack(">I", len(data)) + data)
    except Exception as exc:
        raise SyncError(f"write failed: {exc}") from None


async def read_frame(stream: Any, *, allow_eof: bool = False, bounds: canonical.Bounds = FRAME_BOUNDS) -> Any:
    """One frame's decoded value, checked against `bounds` before it is built; None at a clean
    end of stream when `allow_eof`."""
    header = await _read_exactly(stream, 4, allow_eof=allow_eof)
    if header is None:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        raise SyncError(f"peer announced a frame of {length} bytes; the limit is {MAX_FRAME}")
    data = await _read_exactly(stream, length, allow_eof=False)
    try:
        return canonical.decode(data, max_len=MAX_FRAME, bounds=bounds)
    except ProtocolError as exc:
        raise SyncError(f"undecodable frame: {exc}") from None


async def _read_exactly(stream: Any, n: int, *, allow_eof: bool) -> bytes | None:
    from libp2p.network.stream.exceptions import StreamEOF

    parts: list[bytes] = []
    got = 0
    while got < n:
        try:
            chunk = await stream.read(n - got)
        except StreamEOF:
            chunk = b""
        except Exception as exc:
            raise SyncError(f"read failed: {exc}") from None
        if not chunk:
            if allow_eof and got == 0:
                return None
            raise SyncError("stream ended inside a frame")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def _write_timed(stream: Any, message: dict) -> None:
    with trio.fail_after(REQUEST_TIMEOUT_S):
        await write_frame(stream, message)


async def _close(stream: Any) -> None:
    with trio.move_on_after(2):
        try:
            await stream.close()
        except Exception:
            pass


def _buckets(reply: dict) -> dict[int, tuple[int, str]]:
    rows = reply.get("buckets")
    if not isinstance(rows, list) or len(rows) > MAX_SUMMARY_BUCKETS:
        raise SyncError("malformed summary reply")
    out: dict[int, tuple[int, str]] = {}
    for row in rows:
        if not (isinstance(row, list) and len(row) == 3 and type(row[0]) is int and type(row[1]) is int and type(row[2]) is str):
            raise SyncError("malformed summary bucket")
        out[row[0]] = (row[1], row[2])
    return out


def _int_list(value: Any, limit: int, where: str) -> list[int]:
    if not isinstance(value, list) or len(value) > limit or not all(type(v) is int for v in value):
        raise ProtocolError(f"must be a list of at most {limit} integers", where)
    return value


def _id_list(value: Any, limit: int) -> list[str]:
    if not isinstance(value, list) or len(value) > limit or not all(type(v) is bytes and len(v) == 32 for v in value):
        raise SyncError(f"expected a list of at most {limit} 32-byte ids")
    return [v.hex() for v in value]

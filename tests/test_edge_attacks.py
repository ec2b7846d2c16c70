"""The network edge under attack (issue 20), one test per attack, each on real objects: real
libp2p hosts on loopback for the network ones, a real SQLite pool and trust store for the rest.

Each of these failed on the main line before the edge work: sync ignored bans and rate limits, a
frame of empty maps was decoded whole, a sync had no deadline, a peer could open any number of
streams, a summary reply grew with the pool, a replayed record with a fresh seqno reached the
validator again, and keys being free meant the disk grew without bound.
"""

from __future__ import annotations

import struct
import time
from contextlib import asynccontextmanager
from dataclasses import replace
import tracemalloc

import pytest
import trio

from records_factory import signed_attestation, signed_result

from p2pgolf.node.host import make_host, parse_peer_addr, peer_info
from p2pgolf.node.limits import Admission, Limits, PeerLimiter, Verdict
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol import canonical
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
BENCH = benchmark("smoke")
HOUR = 3_600_000


def _node(path, **options) -> tuple[Node, PoolStore]:
    store = PoolStore(path)
    options.setdefault("sync_interval_s", 3600.0)
    return Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), **options)), store


def _records(n: int, *, keys: int = 10) -> list[bytes]:
    authors = [Identity.generate() for _ in range(keys)]
    now = int(time.time() * 1000)
    return [signed_result(authors[i % keys], seed=i, created_ms=now - i).raw for i in range(n)]


async def _pair(nursery, a: Node, b: Node) -> None:
    """Start both nodes and connect b to a (b syncs with a at once unless told otherwise)."""
    await nursery.start(a.run)
    await nursery.start(b.run)
    await b.host.connect(peer_info(parse_peer_addr(a.addrs[0])))


async def _raw_host(nursery_stack, handlers: dict | None = None):
    import multiaddr
    from libp2p.custom_types import TProtocol

    host = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    for protocol, handler in (handlers or {}).items():
        host.set_stream_handler(TProtocol(protocol), handler)
    await nursery_stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
    return host


# --- one admission path ----------------------------------------------------------------------


async def _quiet_pair(nursery, a: Node, b: Node) -> None:
    """Start both and connect b to a, with no automatic sync (the test drives it)."""
    await nursery.start(a.run)
    await nursery.start(b.run)
    b._synced.add(a.peer_id)
    a._synced.add(b.peer_id)
    await b.host.connect(peer_info(parse_peer_addr(a.addrs[0])))


def test_records_by_sync_are_refused_from_a_banned_peer(tmp_path):
    from p2pgolf.node.sync import SyncError, sync_with

    records = _records(20)

    async def main() -> None:
        a, store_a = _node(tmp_path / "a.sqlite")
        b, store_b = _node(tmp_path / "b.sqlite", limits=Limits(invalid_before_ban=1))
        store_a.add_many(records)
        async with trio.open_nursery() as nursery:
            await _quiet_pair(nursery, a, b)
            # a pushed one invalid record by gossip and is shut out: sync takes nothing from it
            assert b.admission.admit(b"\x00" * 8, a.peer_id) == Verdict.INVALID
            assert b.admission.limiter.is_banned(a.peer_id)
            with pytest.raises(SyncError, match="shut out"):
                await sync_with(b.host, a.peer_id, BENCH.id, store_b, b.admission)
            assert store_b.count() == 0
            a.stop()
            b.stop()

    trio.run(main)


def test_records_by_sync_beyond_the_peer_s_rate_are_refused(tmp_path):
    from p2pgolf.node.sync import SyncError, sync_with

    records = _records(40)

    async def main() -> None:
        a, store_a = _node(tmp_path / "a.sqlite")
        b, store_b = _node(tmp_path / "b.sqlite", limits=Limits(fetched_burst=10, fetched_per_s=0.001))
        store_a.add_many(records)
        async with trio.open_nursery() as nursery:
            await _quiet_pair(nursery, a, b)
            with pytest.raises(SyncError, match="over its rate"):  # the bucket holds 10; the peer serves 40
                await sync_with(b.host, a.peer_id, BENCH.id, store_b, b.admission)
            assert store_b.count() == 10
            assert b.admission.counts[Verdict.RATE_LIMITED] == 30
            a.stop()
            b.stop()

    trio.run(main)


def test_a_peer_pushing_far_past_its_rate_is_shut_out_like_one_sending_invalid_records(tmp_path):
    store = PoolStore(tmp_path / "pool.sqlite")
    limits = Limits(records_per_s=0.001, records_burst=5, flood_before_ban=20)
    admission = Admission(store, TrustStore(store), {BENCH.id}, limits, own_key="0" * 64, limiter=PeerLimiter(limits))
    banned: list[str] = []
    admission.on_ban = banned.append
    raws = _records(40, keys=40)
    verdicts = [admission.admit(raw, "12D3KooWFlooder") for raw in raws]
    assert verdicts[:5] == [Verdict.ADDED] * 5
    assert verdicts[5:25] == [Verdict.RATE_LIMITED] * 20
    assert banned == ["12D3KooWFlooder"]
    assert set(verdicts[25:]) == {Verdict.BANNED}
    assert store.count() == 5


def test_pool_import_passes_the_same_storage_checks_as_records_from_peers(tmp_path):
    from p2pgolf.pool.transfer import export_records, import_records

    villain, stranger = Identity.generate(), Identity.generate()
    source = PoolStore(tmp_path / "source.sqlite")
    source.add_many([signed_result(villain, seed=1).raw, *[signed_result(stranger, seed=i).raw for i in range(5)]])
    export_records(source, tmp_path / "dump.msgpack")
    store = PoolStore(tmp_path / "pool.sqlite")
    TrustStore(store).block(villain.public_hex)
    report = import_records(store, tmp_path / "dump.msgpack", unknown_key_cap=3)
    assert len(report.added) == 3
    reasons = sorted(reason.split(" ")[1] for _, reason in report.rejected)
    assert reasons == ["blocked", "over-cap", "over-cap"]
    assert store.count(author=villain.public_hex) == 0


# --- bounded decoding, deadlines, streams, summaries -----------------------------------------


class _BytesStream:
    """The read side of a stream over fixed bytes (the frame reader only calls read)."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)

    async def read(self, n: int) -> bytes:
        chunk, self.data = bytes(self.data[:n]), self.data[n:]
        return chunk


@pytest.mark.parametrize("payload", ["empty maps", "nested lists"])
def test_a_legal_size_frame_of_millions_of_empty_containers_is_refused_before_it_is_built(payload):
    from p2pgolf.node.sync import MAX_FRAME, SyncError, read_frame

    size = MAX_FRAME - 16
    if payload == "empty maps":  # {"ids": [{}, {}, ...]}: 8 MiB of one-byte maps
        body = b"\x81\xa3ids\xdd" + (size - 9).to_bytes(4, "big") + b"\x80" * (size - 9)
    else:  # [[[], [], ...], ...] within every per-container limit
        inner = b"\xdc\xff\xff" + b"\x90" * 65535
        body = b"\xdc" + (size // len(inner)).to_bytes(2, "big") + inner * (size // len(inner))
    frame = struct.pack(">I", len(body)) + body
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(SyncError, match="objects in one message|too long|oversized"):
            trio.run(read_frame, _BytesStream(frame))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.5
    assert peak < 3 * MAX_FRAME  # the frame's bytes, not 650 MB of dicts


def test_a_slow_sync_server_cannot_hold_a_sync_past_its_deadline(tmp_path, monkeypatch):
    """The server answers every request well inside the request timeout, and has 79 batches to send."""
    import p2pgolf.node.sync as sync
    from contextlib import AsyncExitStack

    monkeypatch.setattr(sync, "REQUEST_TIMEOUT_S", 2.0)
    monkeypatch.setattr(sync, "SYNC_DEADLINE_S", 1.0, raising=False)
    start = (int(time.time() * 1000) // HOUR - 400) * HOUR

    async def slow(stream) -> None:
        try:
            while True:
                req = await sync.read_frame(stream, allow_eof=True)
                if req is None:
                    return
                await trio.sleep(0.2)
                if req["op"] == "summary":
                    await sync.write_frame(stream, {"buckets": [[start + i * HOUR, 100, "ab" * 32] for i in range(400)], "more": False})
                elif req["op"] == "ids":
                    await sync.write_frame(stream, {"ids": [i.to_bytes(32, "big") for i in range(20_000)]})
                else:
                    await sync.write_frame(stream, {"records": []})
        except sync.SyncError:
            pass

    async def main() -> None:
        node, store = _node(tmp_path / "a.sqlite")
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            await nursery.start(node.run)
            evil = await _raw_host(stack, {sync.SYNC_PROTOCOL: slow})
            node._synced.add(evil.get_id().to_base58())
            await node.host.connect(peer_info(parse_peer_addr(f"{evil.get_addrs()[0]}")))
            began = trio.current_time()
            outcome = "still running after 6 s"
            with trio.move_on_after(6):
                try:
                    await sync.sync_with(node.host, evil.get_id().to_base58(), BENCH.id, store, node.admission)
                    outcome = "finished"
                except sync.SyncError as exc:
                    outcome = str(exc)
            assert "did not finish within 1 s" in outcome
            assert trio.current_time() - began < 3.0
            with trio.CancelScope(shield=True):
                await evil.close()
            node.stop()

    trio.run(main)


def test_one_peer_cannot_hold_more_than_its_share_of_sync_streams(tmp_path):
    from p2pgolf.node.sync import SyncError, open_sync_stream, request

    async def main() -> None:
        a, _ = _node(tmp_path / "a.sqlite")  # the default: 8 streams per peer
        b, _ = _node(tmp_path / "b.sqlite")
        async with trio.open_nursery() as nursery:
            await _quiet_pair(nursery, a, b)
            streams, answered = [], 0
            for _ in range(12):  # each held open; a refused one fails to open or to answer
                try:
                    with trio.fail_after(5):
                        stream = await open_sync_stream(b.host, a.peer_id)
                        streams.append(stream)
                        await request(stream, {"op": "summary", "bench": BENCH.id})
                    answered += 1
                except (SyncError, trio.TooSlowError):
                    pass
            assert answered == 8
            assert a.stream_slots.refused == 4
            for stream in streams:
                with trio.move_on_after(1):
                    try:
                        await stream.close()
                    except Exception:
                        pass
            a.stop()
            b.stop()

    trio.run(main)


def test_a_summary_reply_is_bounded_however_many_buckets_the_pool_holds(tmp_path):
    from p2pgolf.node.sync import SyncServer

    store = PoolStore(tmp_path / "pool.sqlite")
    key = Identity.generate()
    first = (int(time.time() * 1000) // HOUR - 2000) * HOUR
    store.add_many([signed_result(key, seed=i, created_ms=first + i * HOUR).raw for i in range(1500)])
    admission = Admission(store, TrustStore(store), {BENCH.id}, Limits(), own_key="0" * 64)
    server = SyncServer(store, admission, {BENCH.id})
    request = canonical.encode({"op": "summary", "bench": BENCH.id})
    reply = server._answer(canonical.decode(request, max_len=1 << 10))
    assert len(canonical.encode(reply)) < 50_000  # was ~125 KB for 1500 buckets, and grew with the pool
    pages, after = [], -1
    while True:  # paging still gives the client every bucket
        reply = server._answer({"op": "summary", "bench": BENCH.id, "after": after})
        pages.append(len(reply["buckets"]))
        if not reply["more"]:
            break
        after = reply["buckets"][-1][0]
    assert sum(pages) == 1500 and len(pages) == 3


# --- gossip replays ----------------------------------------------------------------------------


@asynccontextmanager
async def _gossip_attacker(node: Node):
    """A validator-less gossipsub host (default ids: sender + seqno) meshed with `node`; yields its pubsub."""
    from contextlib import AsyncExitStack

    import multiaddr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    async with AsyncExitStack() as stack:
        host = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
        router = GossipSub([PROTOCOL_ID_V11], 6, 4, 12, heartbeat_interval=1, spam_protection_enabled=False)
        pubsub = Pubsub(host, router)
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        try:
            await pubsub.wait_until_ready()
            await pubsub.subscribe(BENCH.topic)
            await host.connect(peer_info(parse_peer_addr(node.addrs[0])))
            with trio.fail_after(10):
                while node.peer_id not in {p.to_base58() for p in pubsub.peer_topics.get(BENCH.topic, ())}:
                    await trio.sleep(0.05)
            yield pubsub
        finally:
            with trio.CancelScope(shield=True):
                await host.close()


def test_a_record_replayed_with_fresh_seqnos_is_dropped_before_the_validator(tmp_path):
    record = signed_result(Identity.generate(), seed=7)

    async def main() -> None:
        node, store = _node(tmp_path / "a.sqlite")
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            async with _gossip_attacker(node) as pubsub:
                for _ in range(5):
                    await pubsub.publish(BENCH.topic, record.raw)  # a fresh seqno each time
                await pubsub.publish(BENCH.topic, signed_result(Identity.generate(), seed=8).raw)
                with trio.fail_after(10):
                    while store.count() < 2:
                        await trio.sleep(0.05)
                await trio.sleep(0.3)
                assert node.gossip.received == 2  # the record once, then the other one
            node.stop()

    trio.run(main)


def test_a_gossip_flood_is_dropped_before_verification_and_its_sender_shut_out(tmp_path):
    flood = _records(60, keys=60)

    async def main() -> None:
        node, store = _node(tmp_path / "a.sqlite", limits=Limits(records_per_s=0.001, records_burst=5, flood_before_ban=10))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            async with _gossip_attacker(node) as pubsub:
                for raw in flood:
                    await pubsub.publish(BENCH.topic, raw)
                with trio.fail_after(10):
                    while not node.gossip.pubsub.get_blacklisted_peers():
                        await trio.sleep(0.05)
                await trio.sleep(0.3)
            assert store.count() == 5
            assert node.gossip.received == 5  # the other 55 never reached signature checks or the validator
            assert node.admission.counts[Verdict.RATE_LIMITED] == 10
            node.stop()

    trio.run(main)


# --- storage quota -----------------------------------------------------------------------------


def test_unknown_keys_share_one_quota_while_own_pinned_and_trusted_attested_records_always_fit(tmp_path):
    store = PoolStore(tmp_path / "pool.sqlite")
    trust = TrustStore(store)
    own, friend = Identity.generate(), Identity.generate()
    trust.set_own(own.public_hex)
    trust.pin(friend.public_hex, "friend")
    size = len(signed_result(Identity.generate()).raw)
    limits = Limits(unknown_quota_bytes=20 * size + size // 2)
    admission = Admission(store, trust, {BENCH.id}, limits, own_key=own.public_hex)
    flood = [signed_result(Identity.generate(), seed=i).raw for i in range(60)]  # a fresh key each: no per-key cap bites
    verdicts = [admission.admit(raw, f"12D3KooWPeer{i % 3}") for i, raw in enumerate(flood)]
    assert verdicts.count(Verdict.ADDED) == 20 and verdicts.count(Verdict.OVER_QUOTA) == 40
    usage = admission.quota()
    assert usage.unknown_records == 20 and usage.unknown_bytes <= limits.unknown_quota_bytes
    # past the quota: our own and pinned keys' records are never refused ...
    assert admission.admit(signed_result(friend, seed=1).raw, "12D3KooWPeer0") == Verdict.ADDED
    assert admission.admit_signed(signed_result(own, seed=1)) == Verdict.ADDED
    # ... and an unknown key's record that a trusted key attested is kept first
    stranger = signed_result(Identity.generate(), seed=99)
    assert admission.admit(stranger.raw, "12D3KooWPeer1") == Verdict.OVER_QUOTA
    assert admission.admit(signed_attestation(friend, stranger, val_bpb=2.5).raw, "12D3KooWPeer1") == Verdict.ADDED
    assert admission.admit(stranger.raw, "12D3KooWPeer1") == Verdict.ADDED
    assert store.count() == 24


def test_pool_stats_shows_unknown_key_usage_against_the_quota(tmp_path):
    import json

    from click.testing import CliRunner

    from p2pgolf.node.cli import cli as main

    home = tmp_path / "home"
    home.mkdir()
    runner = CliRunner()
    (home / "config.toml").write_text("[limits]\nunknown_quota_bytes = 100000\n")
    with PoolStore(home / "pool.sqlite") as store:
        store.add_many(_records(3, keys=3))
        expected = store.untrusted_usage()
    result = runner.invoke(main, ["--home", str(home), "pool", "stats", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["unknown_keys"] == {"bytes": expected[0], "records": 3, "quota_bytes": 100000}
    text = runner.invoke(main, ["--home", str(home), "pool", "stats"]).output
    assert "unknown keys:" in text and "of the 97.7 KiB quota" in text


def test_a_result_whose_budget_is_not_its_benchmark_s_is_refused_like_another_benchmark(tmp_path):
    from records_factory import make_result
    from p2pgolf.protocol.signing import sign_record

    store = PoolStore(tmp_path / "pool.sqlite")
    admission = Admission(store, TrustStore(store), {BENCH.id}, Limits(), own_key="0" * 64)
    key = Identity.generate()
    honest = sign_record(make_result(key, seed=1), key.signing_key)
    longer = sign_record(replace(make_result(key, seed=2), budget_s=BENCH.budget_s * 10), key.signing_key)  # ten times the training
    assert admission.admit(honest.raw, "12D3KooWPeer") == Verdict.ADDED
    assert admission.admit(longer.raw, "12D3KooWPeer") == Verdict.WRONG_BENCH
    assert store.count() == 1


# --- SPEC ------------------------------------------------------------------------------------


def test_spec_gossip_message_id_and_sync_frame_vectors_hold():
    """SPEC.md sections 12 and 13: the message id vector, and the sync frames from our encoder."""
    import hashlib
    import json
    import re
    from pathlib import Path

    from p2pgolf.node.gossip import content_message_id
    from p2pgolf.node.sync import SYNC_PROTOCOL

    spec = (Path(__file__).resolve().parents[1] / "protocol" / "SPEC.md").read_text()
    vectors = json.loads(re.search(r"## 8\. Test vectors.*?```json\n(.*?)\n```", spec, re.S).group(1))
    envelope = bytes.fromhex(next(r for r in vectors["records"] if r["name"] == "result")["envelope_hex"])
    stated = re.search(r"the\s+message id is `([0-9a-f]{64})`", spec).group(1)

    class Msg:
        data = envelope

    assert content_message_id(Msg()).hex() == stated == hashlib.sha256(envelope).hexdigest()
    assert f"## 13. Sync protocol (`{SYNC_PROTOCOL}`)" in spec
    ids = bytes(range(32)), bytes(range(1, 33))
    frames = {
        "summary request": {"op": "summary", "bench": BENCH.id, "after": -1},
        "summary reply": {"buckets": [[1764590400000, 2, hashlib.sha256(b"".join(sorted(ids))).hexdigest()]], "more": False},
        "get request": {"op": "get", "ids": [ids[0]]},
    }
    for name, message in frames.items():
        data = canonical.encode(message)
        stated_hex = re.search(rf"{name}:\s+([0-9a-f]+)", spec).group(1)
        assert stated_hex == (struct.pack(">I", len(data)) + data).hex(), name


def test_bounded_decoding_agrees_with_plain_decoding_and_raises_only_protocol_errors():
    """Frames and their mutations (bytes flipped, cut, repeated): with bounds, decoding gives what
    plain decoding gives, or a ProtocolError, and never more objects than the bounds allow."""
    import random

    from p2pgolf.protocol.errors import ProtocolError

    bounds = canonical.Bounds(max_items=12, max_container=6, max_str=16, max_bin=16, max_depth=3)
    seeds = [
        {"op": "get", "ids": [bytes(range(16)), b"x" * 3]},
        {"buckets": [[1, 2, "ab"], [3, 4, "cd"]], "more": False},
        [[[]]], {"a": {"b": [1, -1, 2**40, None, True, 1.5]}}, "s" * 20, list(range(7)),
    ]
    rng = random.Random(20)

    def outcome(data: bytes, **kw):
        try:
            return ("ok", canonical.decode(data, max_len=1 << 12, **kw))
        except ProtocolError:
            return ("error", None)

    def objects(value) -> int:
        if isinstance(value, dict):
            return sum(1 + objects(v) for v in value.values()) + len(value)
        if isinstance(value, list):
            return sum(1 + objects(v) for v in value)
        return 0

    accepted = 0
    for _ in range(3000):
        data = bytearray(canonical.encode(rng.choice(seeds)))
        for _ in range(rng.randrange(4)):
            i = rng.randrange(len(data))
            choice = rng.randrange(3)
            if choice == 0:
                data[i] = rng.randrange(256)
            elif choice == 1:
                del data[i:]
                if not data:
                    data = bytearray(b"\x90")
            else:
                data[i:i] = data[i : i + rng.randrange(1, 8)] * rng.randrange(1, 4)
        bounded = outcome(bytes(data), bounds=bounds)
        if bounded[0] == "ok":
            accepted += 1
            assert outcome(bytes(data)) == bounded
            assert objects(bounded[1]) <= bounds.max_items
    assert accepted > 100  # the mutations left many frames decodable, so the agreement was tested


def test_finding_the_scripts_a_pool_uses_parses_only_results_that_mention_a_script(tmp_path):
    """A pool full of built-in results (a catch-up) is scanned in SQLite, not parsed record by
    record; a note that says `script:` is read and then skipped by its base."""
    import recordgen as g

    from p2pgolf.node.script_fetch import scripts_in_use
    from p2pgolf.protocol.candidates import script_base
    from p2pgolf.protocol.records import Result
    from p2pgolf.protocol.signing import sign_record

    key = Identity.generate()
    sha = "ab" * 32
    scripted = sign_record(Result(bench=BENCH.id, author=key.public_hex, created_ms=g.T0, base=script_base(sha), diff={"LR": 0.004}, tokenizer="byte256",
                                  hw=g.CPU, budget_s=BENCH.budget_s, seed=1, metrics=g.metrics(2.0), trainer="script/0"), key.signing_key)  # fmt: skip
    store = PoolStore(tmp_path / "pool.sqlite")
    store.add_many([*(signed_result(key, seed=i).raw for i in range(50)), signed_result(key, seed=99, note="a script: mention").raw, scripted.raw])
    assert sorted(r.record.seed for r in store.script_results(BENCH.id)) == [1, 99]
    assert list(scripts_in_use(store, {BENCH.id})) == [sha]


def test_batches_verify_alike_in_worker_processes_and_in_a_thread():
    from p2pgolf.node.verify_pool import verify_batch
    from p2pgolf.pool.store import Row

    raws = _records(6, keys=2)
    broken = bytearray(raws[0])
    broken[-1] ^= 1
    batch = [*raws, bytes(broken), b"junk"]

    async def main():
        return await verify_batch(batch, in_processes=True), await verify_batch(batch, in_processes=False)

    in_processes, in_thread = trio.run(main)
    assert [None if r is None else r.id for r in in_processes] == [None if r is None else r.id for r in in_thread]
    assert in_processes[-2:] == [None, None] and all(isinstance(r, Row) for r in in_processes[:-2])
    assert [Row.of(r) for r in in_thread[:-2]] == in_processes[:-2]

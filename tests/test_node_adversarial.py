"""Hostile input at the edge: forged, malformed and blocked records reach no pool and are not
forwarded; a peer that keeps sending invalid records is shut out; a sync peer that breaks the
framing rules does not hurt the node.

The attacker is a real libp2p host in the test process, speaking gossipsub with no validator,
connected to node A (a `p2pgolf join` process) whose only other neighbour is node B.
"""

from __future__ import annotations

import struct

import pytest
import trio

from node_procs import NodeProc, make_home, stop_all, wait_until
from records_factory import signed_result

from p2pgolf.node.host import make_host, peer_info, parse_peer_addr
from p2pgolf.node.limits import Limits
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol import canonical
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(90)
BENCH = benchmark("smoke")


def forged(raw: bytes) -> bytes:
    """The same record with one bit of its signature flipped."""
    envelope = canonical.decode(raw, max_len=1 << 16)
    sig = bytearray(envelope["sig"])
    sig[0] ^= 1
    return canonical.encode({"body": envelope["body"], "sig": bytes(sig)})


async def attack(target_addr: str, payloads: list[bytes], *, settle_s: float = 1.5) -> None:
    """Connect a validator-less gossipsub host to `target_addr` and publish `payloads` raw."""
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    host = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    router = GossipSub([PROTOCOL_ID_V11], 6, 4, 12, heartbeat_interval=1, spam_protection_enabled=False)
    pubsub = Pubsub(host, router)
    import multiaddr

    async with background_trio_service(pubsub), background_trio_service(router):
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            try:
                await pubsub.wait_until_ready()
                await pubsub.subscribe(BENCH.topic)
                target = parse_peer_addr(target_addr)
                with trio.fail_after(10):
                    await host.connect(peer_info(target))
                    while not any(p.to_base58() == target.peer_id for p in pubsub.peer_topics.get(BENCH.topic, ())):
                        await trio.sleep(0.05)
                for payload in payloads:
                    await pubsub.publish(BENCH.topic, payload)
                await trio.sleep(settle_s)
            finally:
                with trio.CancelScope(shield=True):
                    await host.close()


@pytest.fixture
def pair(tmp_path):
    """Node A (blocks one author) and node B, in a line A - B."""
    blocked = Identity.generate()
    home_a, id_a = make_home(tmp_path, "a")
    with TrustStore(home_a.pool_db) as trust:
        trust.block(blocked.public_hex, "spammer")
    home_b, id_b = make_home(tmp_path, "b")
    a, b = NodeProc(home_a, id_a), NodeProc(home_b, id_b)
    a.start([])
    b.start([a.addr])
    try:
        a.wait_ready()
        b.wait_ready()
        wait_until(lambda: len(b.status()["peers"]) == 1, 20, what="B to connect to A")
        yield a, b, blocked
    finally:
        stop_all([a, b])


def test_forged_malformed_and_blocked_records_reach_no_pool_and_are_not_forwarded(pair):
    a, b, blocked = pair
    honest = Identity.generate()
    bad_signature = forged(signed_result(honest, seed=1).raw)
    malformed = b"\x82\xa4body\xc4\x03abc\xa3sig\xc0"  # a map with the wrong field types
    garbage = b"\xff" * 40
    by_blocked = signed_result(blocked, seed=2)
    good = signed_result(honest, seed=3)
    trio.run(attack, a.addr, [bad_signature, malformed, garbage, by_blocked.raw, good.raw])

    # The good record, sent last, went through A to B: the path worked for the bad ones too.
    wait_until(lambda: b.pool_count() == 1, 10, what="the good record at B")
    st_a, st_b = a.status(), b.status()
    assert st_a["pool_records"] == 1 and st_b["pool_records"] == 1
    assert st_a["rejected"] == 4
    assert st_b["gossip_received"] == 1  # A forwarded only the good record
    assert st_b["rejected"] == 0
    with PoolStore(a.home.pool_db) as store_a, PoolStore(b.home.pool_db) as store_b:
        for store in (store_a, store_b):
            assert store.has(good.id)
            assert not store.has(by_blocked.id)
            assert store.count() == 1


def test_peer_sending_invalid_records_is_disconnected_after_the_threshold(tmp_path):
    async def main() -> None:
        store = PoolStore(tmp_path / "pool.sqlite")
        node = Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), limits=Limits(invalid_before_ban=3)))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await attack(node.addrs[0], [b"\x00" * 10, b"\x01" * 10, b"\x02" * 10], settle_s=1.0)
            banned = [p for p in node.gossip.pubsub.get_blacklisted_peers()]
            assert len(banned) == 1
            assert banned[0].to_base58() not in node.connected_peers()
            assert store.count() == 0
            node.stop()

    trio.run(main)


def test_sync_peer_announcing_an_oversized_frame_is_cut_off_and_the_node_keeps_serving(tmp_path):
    from libp2p.custom_types import TProtocol
    from libp2p.network.stream.exceptions import StreamError
    from libp2p.peer.id import ID

    from p2pgolf.node.sync import SYNC_PROTOCOL, sync_with

    async def main() -> None:
        store = PoolStore(tmp_path / "a.sqlite")
        store.add(signed_result(Identity.generate(), seed=5).raw)
        node = Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,)))
        other_store = PoolStore(tmp_path / "b.sqlite")
        other = Node(Identity.generate(), other_store, TrustStore(other_store), NodeOptions(benches=(BENCH,), sync_interval_s=3600))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(other.run)
            await other.host.connect(peer_info(parse_peer_addr(node.addrs[0])))
            stream = await other.host.new_stream(ID.from_base58(node.peer_id), [TProtocol(SYNC_PROTOCOL)])
            await stream.write(struct.pack(">I", 1 << 31) + b"x" * 16)
            with trio.fail_after(5):
                try:
                    answer = await stream.read(4)
                except StreamError:
                    answer = b""
            assert answer == b""  # the server hung up instead of waiting for 2 GiB
            # The same node still serves well-behaved sync (its own loop may have synced already).
            report = await sync_with(other.host, node.peer_id, BENCH.id, other_store, other.admission)
            assert other_store.count() == 1
            assert report.buckets_differing == 0
            node.stop()
            other.stop()

    trio.run(main)


def test_a_peer_asking_for_sync_faster_than_its_limit_is_refused(tmp_path):
    from p2pgolf.node.sync import SyncError, open_sync_stream, request

    async def main() -> None:
        store = PoolStore(tmp_path / "a.sqlite")
        node = Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), limits=Limits(sync_requests_per_s=0.01, sync_burst=3)))
        other_store = PoolStore(tmp_path / "b.sqlite")
        other = Node(Identity.generate(), other_store, TrustStore(other_store), NodeOptions(benches=(BENCH,), sync_interval_s=3600))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(other.run)
            await other.host.connect(peer_info(parse_peer_addr(node.addrs[0])))
            with trio.fail_after(10):
                while not other.sync_reports:  # the on-connect sync spent one request
                    await trio.sleep(0.05)
            stream = await open_sync_stream(other.host, node.peer_id)
            answered = 0
            with pytest.raises(SyncError, match="too many requests"):
                for _ in range(5):
                    await request(stream, {"op": "summary", "bench": BENCH.id})
                    answered += 1
            assert answered == 2  # burst of 3, one already used by the automatic sync
            node.stop()
            other.stop()

    trio.run(main)


def test_a_sync_peer_that_breaks_mid_transfer_fails_that_sync_only(tmp_path):
    """A hostile sync server answers the summary and the ids, then sends a malformed batch."""
    import multiaddr
    from libp2p.custom_types import TProtocol

    from p2pgolf.node.sync import SYNC_PROTOCOL, SyncError, read_frame, sync_with, write_frame

    async def hostile(stream) -> None:
        try:
            while True:
                req = await read_frame(stream, allow_eof=True)
                if req is None:
                    return
                if req["op"] == "summary":
                    await write_frame(stream, {"buckets": [[1_760_000_000_000 - 1_760_000_000_000 % 3_600_000, 1, "ab" * 32]]})
                elif req["op"] == "ids":
                    await write_frame(stream, {"ids": [b"\x01" * 32]})
                else:
                    await write_frame(stream, {"records": "not a list"})
        except SyncError:
            pass
        finally:
            await stream.close()

    async def main() -> None:
        store = PoolStore(tmp_path / "a.sqlite")
        node = Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), sync_interval_s=3600))
        evil = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
        evil.set_stream_handler(TProtocol(SYNC_PROTOCOL), hostile)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            async with evil.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                try:
                    await node.host.connect(peer_info(parse_peer_addr(f"{evil.get_addrs()[0]}")))
                    with pytest.raises(SyncError, match="malformed get reply"):
                        await sync_with(node.host, evil.get_id().to_base58(), BENCH.id, store, node.admission)
                    await trio.sleep(0.5)  # the node's own on-connect sync met the same peer
                    assert evil.get_id().to_base58() in node._sync_retry_at
                    assert node.status().peer_id == node.peer_id and store.count() == 0
                finally:
                    with trio.CancelScope(shield=True):
                        await evil.close()
            node.stop()

    trio.run(main)

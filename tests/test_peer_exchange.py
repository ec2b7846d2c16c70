"""Peer exchange in-process: two nodes that only know a third find each other through its DHT,
and a peer cannot make a node store DHT values or provider records."""

from __future__ import annotations

import pytest
import trio

from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.node.peer_exchange import MeshSettings
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
BENCH = benchmark("smoke")


def _node(tmp_path, name: str, **options) -> Node:
    store = PoolStore(tmp_path / f"{name}.sqlite")
    return Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), mesh=MeshSettings(interval_s=0.5), **options))


def test_two_nodes_bootstrapped_from_a_third_connect_to_each_other_directly(tmp_path):
    async def main() -> None:
        a = _node(tmp_path, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            b = _node(tmp_path, "b", bootstrap=(a.addrs[0],))
            c = _node(tmp_path, "c", bootstrap=(a.addrs[0],))
            await nursery.start(b.run)
            await nursery.start(c.run)
            with trio.fail_after(40):
                while c.peer_id not in b.connected_peers():
                    await trio.sleep(0.1)
            assert b.peer_exchange.dht.get_routing_table_size() >= 1
            for node in (a, b, c):
                node.stop()

    trio.run(main)


def test_without_peer_exchange_two_nodes_bootstrapped_from_a_third_stay_a_star(tmp_path):
    async def main() -> None:
        a = _node(tmp_path, "a", peer_exchange=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            b = _node(tmp_path, "b", bootstrap=(a.addrs[0],), peer_exchange=False)
            c = _node(tmp_path, "c", bootstrap=(a.addrs[0],), peer_exchange=False)
            await nursery.start(b.run)
            await nursery.start(c.run)
            with trio.fail_after(20):
                while len(a.connected_peers()) < 2:
                    await trio.sleep(0.1)
            await trio.sleep(3)  # what the test above gives peer exchange, and more
            assert b.connected_peers() == [a.peer_id] and c.connected_peers() == [a.peer_id]
            assert b.peer_exchange is None
            for node in (a, b, c):
                node.stop()

    trio.run(main)


def test_a_peers_put_value_and_add_provider_are_not_stored(tmp_path):
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    from p2pgolf.node.host import make_host, parse_peer_addr, peer_info

    async def main() -> None:
        a = _node(tmp_path, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            other = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
            import multiaddr

            async with other.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                dht = KadDHT(other, DHTMode.SERVER)
                async with background_trio_service(dht):
                    await other.connect(peer_info(parse_peer_addr(a.addrs[0])))
                    await dht.add_peer(a.host.get_id())
                    with trio.fail_after(20):
                        await dht.put_value("plain-key", b"x" * 1000)
                        await dht.provide("plain-key")
                    assert dht.get_value_store_size() == 1  # the library stores it locally...
                    await trio.sleep(0.5)
                    assert a.peer_exchange.dht.get_value_store_size() == 0  # ...we do not
                    assert a.peer_exchange.dht.provider_store.size() == 0
                await other.close()
            a.stop()

    trio.run(main)


def test_a_network_smaller_than_the_target_is_not_asked_again_every_round(tmp_path):
    async def main() -> None:
        a = _node(tmp_path, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            store = PoolStore(tmp_path / "b.sqlite")
            settings = MeshSettings(interval_s=0.1, max_interval_s=1.6)
            b = Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), bootstrap=(a.addrs[0],), mesh=settings))
            await nursery.start(b.run)
            with trio.fail_after(20):
                while b.peer_exchange.lookups == 0:
                    await trio.sleep(0.05)
            await trio.sleep(4)
            # Rounds every 0.1 s would be ~40 lookups; doubling pauses (0.2, 0.4, ... 1.6) give ~6.
            assert 1 <= b.peer_exchange.lookups <= 12
            a.stop()
            b.stop()

    trio.run(main)

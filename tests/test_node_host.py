"""The host and the Node's lifecycle: our key is the peer id, only Noise is spoken, and the
worker hook runs inside the node and is cancelled with it (or fails without taking it down)."""

from __future__ import annotations

import pytest
import trio

from p2pgolf.node.host import make_host, parse_peer_addr, peer_info
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
BENCH = benchmark("smoke")


def _node(tmp_path, name: str, **kwargs) -> Node:
    store = PoolStore(tmp_path / f"{name}.sqlite")
    return Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,)), **kwargs)


def test_host_peer_id_is_the_nodes_own_signing_key(tmp_path):
    async def main() -> None:
        node = _node(tmp_path, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            assert node.host.get_id().to_base58() == node.identity.peer_id
            (addr,) = node.addrs
            assert addr.startswith("/ip4/127.0.0.1/tcp/") and addr.endswith(f"/p2p/{node.identity.peer_id}")
            node.stop()

    trio.run(main)


def test_a_dialer_offering_only_plaintext_cannot_connect_but_noise_can(tmp_path):
    from libp2p import new_host
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
    import multiaddr

    async def main() -> None:
        node = _node(tmp_path, "a")
        private = Ed25519PrivateKey.from_bytes(Identity.generate().seed)
        pair = KeyPair(private, private.get_public_key())
        plaintext = new_host(key_pair=pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(pair)})
        noise = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            target = peer_info(parse_peer_addr(node.addrs[0]))
            async with plaintext.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), noise.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                try:
                    with pytest.raises(Exception):
                        with trio.fail_after(10):
                            await plaintext.connect(target)
                    assert plaintext.get_id().to_base58() not in node.connected_peers()
                    with trio.fail_after(10):
                        await noise.connect(target)
                    assert noise.get_id().to_base58() in node.connected_peers()
                finally:
                    with trio.CancelScope(shield=True):
                        await plaintext.close()
                        await noise.close()
            node.stop()

    trio.run(main)


def test_worker_runs_in_the_node_and_is_cancelled_when_the_node_stops(tmp_path):
    seen = {}

    async def worker(node: Node) -> None:
        seen["peer_id"] = node.peer_id
        try:
            await trio.sleep_forever()
        finally:
            seen["cancelled"] = True

    async def main() -> None:
        node = _node(tmp_path, "a", worker=worker)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await trio.sleep(0.2)
            assert node.status().worker == "running"
            node.stop()

    trio.run(main)
    assert seen == {"peer_id": seen["peer_id"], "cancelled": True}


def test_a_failing_worker_leaves_the_node_serving(tmp_path):
    async def worker(node: Node) -> None:
        raise RuntimeError("trainer exploded")

    async def main() -> None:
        node = _node(tmp_path, "a", worker=worker)
        other = _node(tmp_path, "b")
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await nursery.start(other.run)
            await trio.sleep(0.2)
            assert node.status().worker == "failed: RuntimeError: trainer exploded"
            with trio.fail_after(10):
                await other.host.connect(peer_info(parse_peer_addr(node.addrs[0])))
            assert other.peer_id in node.connected_peers()
            node.stop()
            other.stop()

    trio.run(main)


def test_a_restarted_node_redials_the_peers_it_remembered_without_bootstrap(tmp_path):
    from p2pgolf.node.home import Home

    home = Home(tmp_path / "b")
    home.root.mkdir()
    identity = Identity.generate()

    async def main() -> None:
        a = _node(tmp_path, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            for bootstrap in ((a.addrs[0],), ()):  # second life: nothing on the command line
                store = PoolStore(home.pool_db)
                b = Node(identity, store, TrustStore(store), NodeOptions(benches=(BENCH,), bootstrap=bootstrap, home=home))
                async with trio.open_nursery() as inner:
                    await inner.start(b.run)
                    with trio.fail_after(10):
                        while a.peer_id not in b.connected_peers():
                            await trio.sleep(0.05)
                    b.stop()
                store.close()
                with trio.fail_after(10):
                    while b.peer_id in a.connected_peers():
                        await trio.sleep(0.05)
            a.stop()

    trio.run(main)


def test_an_inbound_peer_that_stayed_is_redialled_after_it_drops(tmp_path, monkeypatch):
    import p2pgolf.node.discovery as discovery
    from p2pgolf.node.host import DEFAULT_LISTEN

    monkeypatch.setattr(discovery, "INBOUND_KEEP_AFTER_S", 0.5)  # instead of 30 s
    b_identity = Identity.generate()

    async def main() -> None:
        a = _node(tmp_path, "a")
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            port = None
            for life in range(2):
                store = PoolStore(tmp_path / "b.sqlite")
                listen = (DEFAULT_LISTEN if port is None else f"/ip4/127.0.0.1/tcp/{port}",)
                bootstrap = (a.addrs[0],) if life == 0 else ()  # second life: b dials nobody
                b = Node(b_identity, store, TrustStore(store), NodeOptions(benches=(BENCH,), listen=listen, bootstrap=bootstrap))
                async with trio.open_nursery() as inner:
                    await inner.start(b.run)
                    port = int(b.addrs[0].split("/")[4])
                    with trio.fail_after(15):
                        while b.peer_id not in a.discovery.known or b.peer_id not in a.connected_peers():
                            await trio.sleep(0.05)
                    assert a.discovery.known[b.peer_id].addr == b.addrs[0]
                    b.stop()
                store.close()
            a.stop()

    trio.run(main)

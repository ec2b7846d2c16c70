"""Stable addresses: a node with a home listens on the same port after a restart, and a second
node is refused a port the first already listens on (py-libp2p's SO_REUSEPORT would share it)."""

from __future__ import annotations

import socket

import pytest
import trio

from p2pgolf.node.config import dialable_addrs, load_listen_port
from p2pgolf.node.home import Home
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
BENCH = benchmark("smoke")


def _node(path, identity: Identity, **options) -> Node:
    store = PoolStore(path)
    return Node(identity, store, TrustStore(store), NodeOptions(benches=(BENCH,), **options))


async def _addrs_of_one_life(node: Node) -> list[str]:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        addrs = node.addrs
        node.stop()
    node.store.close()
    return addrs


def test_a_restarted_node_keeps_its_listen_port_and_address(tmp_path):
    home = Home(tmp_path / "a")
    home.root.mkdir()
    identity = Identity.generate()
    assert dialable_addrs(home, identity.peer_id) == []  # no port chosen yet

    async def main() -> None:
        first = await _addrs_of_one_life(_node(home.pool_db, identity, home=home))
        second = await _addrs_of_one_life(_node(home.pool_db, identity, home=home))
        assert first == second and "/tcp/0/" not in first[0]
        assert dialable_addrs(home, identity.peer_id) == first  # what `p2pgolf id` prints
        assert load_listen_port(home) == int(first[0].split("/tcp/")[1].split("/")[0])
        fresh = await _addrs_of_one_life(_node(home.pool_db, identity, home=home, keep_port=False))
        assert load_listen_port(home) == int(first[0].split("/tcp/")[1].split("/")[0])  # not overwritten
        assert fresh[0].endswith(identity.peer_id)

    trio.run(main)


def test_a_remembered_port_that_another_program_took_gives_a_fresh_one(tmp_path):
    home = Home(tmp_path / "a")
    home.root.mkdir()
    identity = Identity.generate()

    async def main() -> None:
        (first,) = await _addrs_of_one_life(_node(home.pool_db, identity, home=home))
        port = int(first.split("/tcp/")[1].split("/")[0])
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            (second,) = await _addrs_of_one_life(_node(home.pool_db, identity, home=home))
        assert f"/tcp/{port}/" not in second

    trio.run(main)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def test_a_second_node_on_a_port_in_use_is_refused_naming_the_port(tmp_path):
    async def main() -> None:
        a = _node(tmp_path / "a.sqlite", Identity.generate())
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            port = int(a.addrs[0].split("/tcp/")[1].split("/")[0])
            b = _node(tmp_path / "b.sqlite", Identity.generate(), listen=(f"/ip4/127.0.0.1/tcp/{port}",))
            with pytest.raises(BaseException) as info:
                await nursery.start(b.run)
            (error,) = [e for e in _leaves(info.value) if isinstance(e, ProtocolError)]
            assert f"port {port} is already in use" in str(error)
            assert b.host is None  # refused before any host was built
            a.stop()

    trio.run(main)


def test_a_wildcard_listen_address_is_printed_as_this_machines_interface_addresses(tmp_path):
    home = Home(tmp_path)
    (tmp_path / "config.toml").write_text('[network]\nlisten = ["/ip4/0.0.0.0/tcp/4001"]\n')
    peer = Identity.generate().peer_id
    addrs = dialable_addrs(home, peer)
    assert addrs and all(a.endswith(f"/tcp/4001/p2p/{peer}") and "0.0.0.0" not in a for a in addrs)

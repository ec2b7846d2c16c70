"""The connection cap: which connections a node over its cap closes (pure logic), and the cap
on a real libp2p host on loopback: pinned and busy peers stay, the others are closed down to
the target and forgotten, so Discovery neither keeps nor re-dials them."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from p2pgolf.node.connection_cap import Connection, bucket_of, to_trim
from p2pgolf.node.peer_exchange import MeshSettings
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)


def conn(name: str, **kw) -> Connection:
    return Connection(peer_id=name, age_s=kw.pop("age_s", 100.0), **kw)


def test_nothing_is_closed_at_or_below_the_cap():
    conns = [conn(f"p{i}") for i in range(16)]
    assert to_trim(conns, target=8, cap=16) == []


def test_above_the_cap_it_closes_down_to_the_target_and_never_a_protected_or_young_one():
    conns = [conn(f"p{i}") for i in range(14)] + [conn("pinned", protected=True), conn("young", age_s=3.0), conn("syncing", protected=True)]
    chosen = to_trim(conns, target=8, cap=16)
    assert len(chosen) == 17 - 8
    assert not {"pinned", "young", "syncing"} & set(chosen)


def test_when_most_are_protected_it_closes_only_what_it_may():
    conns = [conn(f"keep{i}", protected=True) for i in range(15)] + [conn("a"), conn("b")]
    assert sorted(to_trim(conns, target=8, cap=16)) == ["a", "b"]


def test_peers_in_a_crowded_address_range_go_before_a_peer_that_adds_diversity():
    crowded = [conn(f"c{i}", addr_range="ip4 203.0.113.0/24", bucket=i) for i in range(5)]
    lone = [conn(f"l{i}", addr_range=f"ip4 198.51.{i}.0/24", bucket=10 + i) for i in range(5)]
    chosen = to_trim(crowded + lone, target=6, cap=8)
    assert set(chosen) == {"c0", "c1", "c2", "c3"}  # four of the five in one /24; every lone one stays


def test_peers_in_a_crowded_kademlia_bucket_go_first_then_non_mesh_then_inbound():
    same_bucket = [conn(f"b{i}", bucket=1) for i in range(3)]
    spread = [conn(f"s{i}", bucket=20 + i, in_mesh=i == 0, outbound=i == 1) for i in range(3)]
    assert set(to_trim(same_bucket + spread, target=3, cap=5)) == {"b0", "b1", "b2"}
    # equal buckets: outside the gossip mesh and inbound first; the mesh member stays longest
    assert to_trim(spread + [conn("s9", bucket=29)], target=1, cap=2) == ["s2", "s9", "s1"]


def test_a_cap_below_the_target_is_refused_with_both_numbers():
    with pytest.raises(ValueError, match=r"cap \(4\).*target degree \(8\)"):
        to_trim([], target=8, cap=4)
    with pytest.raises(ValueError, match="max_degree \\(4\\) must be at least target_degree \\(8\\)"):
        MeshSettings(max_degree=4)


def test_buckets_are_shared_prefix_lengths():
    a, b = Identity.generate().peer_id, Identity.generate().peer_id
    assert bucket_of(a, a) == 256
    assert 0 <= bucket_of(a, b) < 256 and bucket_of(a, b) == bucket_of(b, a)


def test_a_host_over_its_cap_closes_surplus_learned_peers_and_forgets_them(monkeypatch):
    import multiaddr

    import p2pgolf.node.discovery as discovery
    from p2pgolf.node.host import full_addrs, make_host, parse_peer_addr, peer_info
    from p2pgolf.node.peer_exchange import PeerExchange

    monkeypatch.setattr(discovery, "WATCH_INTERVAL_S", 0.05)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]

    async def main() -> None:
        hub = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
        others = [make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(5)]
        ids = [h.get_id().to_base58() for h in others]
        pinned, syncing = ids[0], ids[1]
        async with hub.run(listen), trio.open_nursery() as nursery:
            d = discovery.Discovery(hub, pinned=frozenset({pinned}))
            px = PeerExchange(hub, d, MeshSettings(target_degree=2, max_degree=3, grace_s=0.0), busy=lambda p: p == syncing)
            await nursery.start(d.run, [])
            async with AsyncExitStack() as stack:
                for h in others:
                    await stack.enter_async_context(h.run(listen))
                hub_info = peer_info(parse_peer_addr(full_addrs(hub)[0]))
                async with trio.open_nursery() as dials:  # each dial waits ~0.25 s: all at once
                    for h in others:
                        dials.start_soon(h.connect, hub_info)
                learned = parse_peer_addr(full_addrs(others[2])[0])
                assert d.add(learned)  # kept, as peer exchange keeps a peer it dialled
                with trio.fail_after(10):
                    while len(hub.get_connected_peers()) < 5:
                        await trio.sleep(0.05)
                assert not d.wants_more()  # 5 connections, target 2
                closed = await px.trim()
                assert len(closed) == 3 and pinned not in closed and syncing not in closed
                with trio.fail_after(10):
                    while len(hub.get_connected_peers()) > 2:
                        await trio.sleep(0.05)
                assert {p.to_base58() for p in hub.get_connected_peers()} == {pinned, syncing}
                assert learned.peer_id in closed and learned.peer_id not in d.known  # its keeper ended
                assert all(d.is_forgotten(p) for p in closed) and not d.add(learned)
                dials = d.dials
                await trio.sleep(0.2)  # a keeper would have re-dialled within 0.05 s
                assert d.dials == dials and await px.trim() == []  # under the cap: nothing more
                async with trio.open_nursery() as closing:
                    for h in others:
                        closing.start_soon(h.close)
            nursery.cancel_scope.cancel()
        await hub.close()

    trio.run(main)


def test_max_degree_comes_from_config_or_join_and_a_lower_cap_lowers_the_target(tmp_path):
    from p2pgolf.node.commands.join_cmd import _mesh_settings
    from p2pgolf.node.config import load_config
    from p2pgolf.node.home import Home
    from p2pgolf.protocol.errors import ProtocolError

    home = Home(tmp_path)
    home.config_file.write_text("[network]\nmax_degree = 12\n")
    assert load_config(home).max_degree == 12
    home.config_file.write_text('[network]\nmax_degree = "lots"\n')
    with pytest.raises(ProtocolError, match=r"network\.max_degree: must be a whole number from 1 to 1000, not 'lots'"):
        load_config(home)
    assert (_mesh_settings(None).target_degree, _mesh_settings(None).max_degree) == (8, 16)
    assert (_mesh_settings(12).target_degree, _mesh_settings(12).max_degree) == (8, 12)
    assert (_mesh_settings(4).target_degree, _mesh_settings(4).max_degree) == (4, 4)


def test_a_peer_reached_over_our_own_connection_is_remembered_and_redialled_only_on_demand(monkeypatch):
    import multiaddr

    import p2pgolf.node.discovery as discovery
    from p2pgolf.node.host import full_addrs, make_host, parse_peer_addr, peer_info

    monkeypatch.setattr(discovery, "WATCH_INTERVAL_S", 0.05)
    monkeypatch.setattr(discovery, "BACKOFF_START_S", 0.05)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    remembered: list[str] = []

    async def main() -> None:
        a, b = (make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(2))
        async with a.run(listen), b.run(listen), trio.open_nursery() as nursery:
            d = discovery.Discovery(a, on_connected=lambda p: remembered.append(p.addr))
            wanted = [False]
            d.wants_more = lambda: wanted[0]
            await nursery.start(d.run, [])
            b_addr = full_addrs(b)[0]
            await a.connect(peer_info(parse_peer_addr(b_addr)))  # as a DHT query dials, not through Discovery
            with trio.fail_after(10):
                while b.get_id().to_base58() not in d.known:
                    await trio.sleep(0.05)
            assert remembered == [b_addr]  # the address our connection reached, b's listen address
            await a.disconnect(b.get_id())
            await trio.sleep(0.3)
            assert d.dials == 0 and not a.get_connected_peers()  # not wanted: not dialled back
            wanted[0] = True
            with trio.fail_after(10):
                while not a.get_connected_peers():
                    await trio.sleep(0.05)
            assert d.dials >= 1
            nursery.cancel_scope.cancel()
            await b.close()
        await a.close()

    trio.run(main)


def test_a_node_whose_connections_are_all_inbound_redials_one_to_remember_it():
    import multiaddr

    import p2pgolf.node.discovery as discovery
    from p2pgolf.node.host import full_addrs, make_host, parse_peer_addr, peer_info
    from p2pgolf.node.peer_exchange import PeerExchange

    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    remembered: list[str] = []

    async def main() -> None:
        a, b = (make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(2))
        async with a.run(listen), b.run(listen):
            d = discovery.Discovery(a, on_connected=lambda p: remembered.append(p.addr))
            px = PeerExchange(a, d, MeshSettings(verify_after_s=0.0))
            await b.connect(peer_info(parse_peer_addr(full_addrs(a)[0])))  # b found a: inbound for a
            b_id = b.get_id().to_base58()
            with trio.fail_after(10):
                while d.advertised_addr(b_id) is None:  # identify tells a where b listens
                    await trio.sleep(0.05)
            assert await px.verify_inbound() == b_id
            assert d.is_connected(b_id) and b_id in d.known and remembered == [full_addrs(b)[0]]
            assert await px.verify_inbound() is None  # b is a peer a dialled now; nobody else to turn
            await b.close()
            await a.close()

    trio.run(main)

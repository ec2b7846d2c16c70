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

"""Discovery against strangers: many fresh ids from one network cannot push the honest peers
out of known_peers.toml or out of the kept set; bootstrap and pinned peers are never evicted;
an inbound peer's advertised address is neither persisted nor kept until a dial of ours to it
has worked (on main it was adopted, persisted and re-dialled for ever)."""

from __future__ import annotations

import pytest
import trio

from p2pgolf.node.address_ranges import PER_RANGE, address_range, bounded_by_range
from p2pgolf.node.config import MAX_KNOWN_PEERS, load_known_peers, save_known_peers
from p2pgolf.node.home import Home
from p2pgolf.node.host import parse_peer_addr
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
IDS = [Identity.from_seed(bytes([i]) * 32).peer_id for i in range(1, 100)]


def addr(ip: str, i: int, port: int = 4001) -> str:
    return f"/ip4/{ip}/tcp/{port}/p2p/{IDS[i]}"


HONEST = [addr(f"198.51.{n}.7", n) for n in range(10)]  # ten peers in ten /24s
SYBILS = [addr(f"203.0.113.{n + 1}", 20 + n % 79, 5000 + n) for n in range(64)]  # 64 ids, one /24
PINNED = addr("203.0.113.200", 99 - 1)


def test_ranges_are_ipv4_slash_24_and_ipv6_slash_48_and_loopback_is_unbounded():
    assert address_range(addr("203.0.113.9", 0)) == address_range(addr("203.0.113.250", 1)) == "ip4 203.0.113.0/24"
    assert address_range(addr("203.0.114.9", 0)) != address_range(addr("203.0.113.9", 0))
    six = f"/ip6/2001:db8:1:2::5/tcp/1/p2p/{IDS[0]}"
    assert address_range(six) == address_range(f"/ip6/2001:db8:1:ffff::9/tcp/1/p2p/{IDS[1]}") == "ip6 2001:db8:1::/48"
    assert address_range(addr("127.0.0.1", 0)) is None
    local = [addr("127.0.0.1", i, 4000 + i) for i in range(20)]
    assert bounded_by_range(local) == local


def test_64_sybil_ids_from_one_network_do_not_evict_the_honest_known_peers(tmp_path):
    home = Home(tmp_path)
    save_known_peers(home, HONEST, pinned=[PINNED])
    newest_first = [*reversed(SYBILS), *load_known_peers(home)]  # every sybil connected after them
    save_known_peers(home, newest_first, pinned=[PINNED])
    kept = load_known_peers(home)
    assert set(HONEST) <= set(kept) and PINNED in kept
    assert sum(a in SYBILS for a in kept) == PER_RANGE and len(kept) <= MAX_KNOWN_PEERS + 1


def test_a_hand_edited_file_full_of_one_network_is_bounded_when_read(tmp_path):
    lines = ",\n".join(f'"{a}"' for a in [*SYBILS, *HONEST])
    (tmp_path / "known_peers.toml").write_text(f"pinned = []\npeers = [\n{lines}\n]\n")
    kept = load_known_peers(Home(tmp_path))
    assert set(HONEST) <= set(kept) and sum(a in SYBILS for a in kept) == PER_RANGE


def _host():
    from p2pgolf.node.host import make_host

    return make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])


def test_kept_peers_are_bounded_per_range_and_pinned_ones_always_kept():
    from p2pgolf.node.discovery import Discovery

    pinned_id = parse_peer_addr(PINNED).peer_id
    d = Discovery(_host(), pinned=frozenset({pinned_id}))
    for a in [*SYBILS, *HONEST]:
        d.add(parse_peer_addr(a))
    assert d.add(parse_peer_addr(PINNED)) is True  # its range is full, but it is pinned
    kept = {p.addr for p in d.known.values()}
    assert set(HONEST) <= kept and PINNED in kept
    assert sum(a in SYBILS for a in kept) == PER_RANGE


def test_an_inbound_peers_address_is_not_persisted_or_kept_until_a_dial_to_it_works(monkeypatch):
    import multiaddr

    import p2pgolf.node.discovery as discovery
    from p2pgolf.node.host import full_addrs, peer_info

    monkeypatch.setattr(discovery, "INBOUND_KEEP_AFTER_S", 0.2)
    monkeypatch.setattr(discovery, "WATCH_INTERVAL_S", 0.05)
    monkeypatch.setattr(discovery, "BACKOFF_START_S", 0.1)
    monkeypatch.setattr(discovery, "PROBE_DIALS", 1)  # a failing libp2p dial takes ~0.7 s (it retries)
    remembered: list[str] = []

    async def main() -> None:
        a, b = _host(), _host()
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        async with a.run(listen), trio.open_nursery() as nursery:
            d = discovery.Discovery(a, on_connected=lambda p: remembered.append(p.addr))
            await nursery.start(d.run, [])
            b_id = b.get_id().to_base58()
            async with b.run([]):  # listens nowhere, and says it listens where nothing does
                await b.connect(peer_info(parse_peer_addr(full_addrs(a)[0])))
                a.get_peerstore().add_addrs(b.get_id(), [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/9")], 3600)
                with trio.fail_after(10):
                    while b_id not in d.probation:
                        await trio.sleep(0.05)
                assert b_id not in d.known and remembered == [] and d.dials == 0  # nothing dialled while connected
                await b.close()
            with trio.fail_after(20):  # b is gone: its address is tried, fails and is forgotten
                while b_id in d.probation or b_id in d._probing:
                    await trio.sleep(0.05)
            await trio.sleep(0.3)
            assert b_id not in d.known and remembered == []
            assert d.dials == discovery.PROBE_DIALS  # and never again
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_host_dials_no_peer_of_its_peerstore_on_its_own():
    """py-libp2p's AutoConnector would dial every address a peer ever advertised, for ever."""
    import multiaddr

    from p2pgolf.node.host import full_addrs

    async def main() -> None:
        a, b = _host(), _host()
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        async with b.run(listen):
            a.get_peerstore().add_addrs(b.get_id(), [multiaddr.Multiaddr(full_addrs(b)[0].rsplit("/p2p/", 1)[0])], 3600)
            async with a.run(listen):
                await trio.sleep(1.0)  # AutoConnector's first round runs as the host starts
                assert a.get_connected_peers() == [] and b.get_connected_peers() == []

    trio.run(main)


def test_peers_of_one_run_cannot_push_out_every_peer_that_worked_before_even_on_loopback(tmp_path):
    """Loopback has no address range, so the bound per range cannot help there."""
    home = Home(tmp_path)
    earlier = [addr("127.0.0.1", n, 4000 + n) for n in range(10)]
    save_known_peers(home, earlier)
    established = load_known_peers(home)
    sybils = [addr("127.0.0.1", 20 + n % 79, 6000 + n) for n in range(70)]
    remembered = list(established)
    for s in sybils:  # each connects in turn, newest first, as Node._remember saves them
        remembered = save_known_peers(home, [s, *remembered], established=established)
    kept = load_known_peers(home)
    assert set(earlier) <= set(kept) and len(kept) == MAX_KNOWN_PEERS

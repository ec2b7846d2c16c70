"""The parts of NAT traversal that need no namespaces: the usable-address list, the AutoNAT
verdict, the relay settings (config.toml [relay] and join's flags), and AutoNAT's dial-back on
two real libp2p hosts on loopback, where py-libp2p 0.8.1's own server says "reachable" for an
address nothing listens on and ours does not."""

from __future__ import annotations

import socket

import pytest
import trio
from click.testing import CliRunner

from p2pgolf.node.addresses import usable_addrs
from p2pgolf.node.cli import cli
from p2pgolf.node.config import load_config
from p2pgolf.node.home import Home
from p2pgolf.node.reachability import make_autonat, verdict
from p2pgolf.node.relay_settings import RelaySettings
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity

ME = Identity.generate().peer_id
RELAY = f"/ip4/198.51.100.10/tcp/4001/p2p/{Identity.generate().peer_id}"


def test_a_private_node_lists_its_relay_address_first_then_listen_and_observed_ones():
    addrs = usable_addrs(ME, ["/ip4/10.1.0.2/tcp/4001"], observed_ips=["198.51.100.1"], relays=[RELAY], reachability="private")
    assert addrs == [f"{RELAY}/p2p-circuit/p2p/{ME}", f"/ip4/10.1.0.2/tcp/4001/p2p/{ME}", f"/ip4/198.51.100.1/tcp/4001/p2p/{ME}"]


def test_a_public_node_lists_direct_addresses_first_and_no_duplicates():
    addrs = usable_addrs(ME, [f"/ip4/198.51.100.10/tcp/4001/p2p/{ME}", "/ip4/198.51.100.10/tcp/4001"], observed_ips=["198.51.100.10"], relays=[RELAY], reachability="public")
    assert addrs == [f"/ip4/198.51.100.10/tcp/4001/p2p/{ME}", f"{RELAY}/p2p-circuit/p2p/{ME}"]


def test_private_loopback_and_garbage_observed_ips_are_not_offered():
    addrs = usable_addrs(ME, ["/ip4/127.0.0.1/tcp/4001"], observed_ips=["10.0.0.7", "127.0.0.1", "192.168.1.4", "fe80::1", "not-an-ip"])
    assert addrs == [f"/ip4/127.0.0.1/tcp/4001/p2p/{ME}"]


def test_an_observed_ipv6_address_goes_with_the_ipv6_listen_port_only():
    addrs = usable_addrs(ME, ["/ip4/10.0.0.2/tcp/4001", "/ip6/fd00::2/tcp/4002"], observed_ips=["2001:db8::5"])
    assert f"/ip6/2001:db8::5/tcp/4002/p2p/{ME}" in addrs and not any("2001:db8::5/tcp/4001" in a for a in addrs)


def test_an_unknown_reachability_is_refused_by_name():
    with pytest.raises(ValueError, match="reachability must be one of unknown, public, private, not 'maybe'"):
        usable_addrs(ME, [], reachability="maybe")


def test_the_verdict_follows_the_majority_and_a_tie_or_silence_decides_nothing():
    assert verdict([]) == "unknown"
    assert verdict([True, False]) == "unknown"
    assert verdict([True, True, False]) == "public"
    assert verdict([False]) == "private"


def test_relay_table_in_config_toml_is_read_and_bad_values_are_named(tmp_path):
    home = Home(tmp_path)
    home.config_file.write_text("[relay]\nservice = false\nmax_circuits = 2\ncircuit_bytes = 1048576\n")
    relay = load_config(home).relay
    assert (relay.service, relay.max_circuits, relay.circuit_bytes, relay.max_reservations) == (False, 2, 1048576, 4)
    home.config_file.write_text("[relay]\ncircuit_duration_s = 0\n")
    with pytest.raises(ProtocolError, match=r"\[relay\].*circuit_duration_s must be a whole number >= 1, not 0"):
        load_config(home)
    home.config_file.write_text("[relay]\nhole_punch = 1\n")
    with pytest.raises(ProtocolError, match="hole_punch must be true or false, not 1"):
        load_config(home)
    home.config_file.write_text("[relay]\nreservation = 3\n")
    with pytest.raises(ProtocolError, match="unknown key.*reservation; expected some of"):
        load_config(home)


def test_relay_settings_map_onto_libp2p_relay_limits():
    limits = RelaySettings(max_reservations=1, max_circuits=3, circuit_bytes=1000, circuit_duration_s=60).limits()
    assert (limits.max_reservations, limits.max_circuit_conns, limits.data, limits.duration) == (1, 3, 1000, 60)


def test_join_refuses_a_negative_relay_limit_before_starting(tmp_path):
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "join", "--bench", "smoke", "--no-train", "--relay-circuits", "-1"])
    assert result.exit_code == 2 and "--relay-circuits" in result.output
    assert not (tmp_path / "h").exists()  # nothing was created


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _dial_back_statuses(fixed: bool) -> dict[str, int]:
    """A client asks a server to dial it back (it is connected to the server from another
    address): at an address where nothing listens, at its real listen address, and at eight
    dead addresses followed by the real one. Returns the AutoNAT status code of each answer."""
    import multiaddr
    from libp2p.host.autonat.autonat import AutoNATService
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2pgolf.node.host import make_host

    server, client = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]), make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    served = make_autonat(server) if fixed else AutoNATService(server)
    asking = AutoNATService(client, serve=False)
    dead = [multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{_closed_port()}").to_bytes() for _ in range(8)]
    out = {}
    async with server.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]), client.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        real = client.get_transport_addrs()[0].to_bytes()
        await client.connect(info_from_p2p_addr(server.get_addrs()[0]))
        for name, addrs in (("nowhere", dead[:1]), ("listening", [real]), ("ninth", [*dead, real])):
            with trio.fail_after(20):
                out[name], _ = await asking.query_server(server.get_id(), addrs, timeout=15)
        assert served is not None
        await client.close()
        await server.close()
    return out


def test_libp2p_0_8_1_autonat_server_calls_an_unreachable_address_reachable_and_ours_does_not():
    from libp2p.host.autonat.pb.autonat_pb2 import Message

    stock, ours = trio.run(_dial_back_statuses, False), trio.run(_dial_back_statuses, True)
    assert stock["nowhere"] == Message.OK  # the upstream server reuses the request's connection
    assert ours["nowhere"] == Message.E_DIAL_ERROR
    assert ours["listening"] == Message.OK  # a fresh connection to where the client listens
    assert ours["ninth"] == Message.E_DIAL_ERROR  # only the first MAX_DIAL_BACK_ADDRS (8) are tried


async def _relay_limits_run() -> dict:
    """A public relay allowing one reservation and two private clients on loopback, each a real
    host with node.relay.Relay running; plus a public node that turned its relay service off."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2pgolf.node.host import make_host
    from p2pgolf.node.relay import Relay

    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    hosts = {name: make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for name in ("relay", "off", "c1", "c2")}
    relays = {
        "relay": Relay(hosts["relay"], RelaySettings(max_reservations=1, hole_punch=False), lambda: "public"),
        "off": Relay(hosts["off"], RelaySettings(service=False, hole_punch=False), lambda: "public"),
        "c1": Relay(hosts["c1"], RelaySettings(hole_punch=False), lambda: "private"),
        "c2": Relay(hosts["c2"], RelaySettings(hole_punch=False), lambda: "private"),
    }
    from contextlib import AsyncExitStack

    from libp2p.tools.anyio_service import background_trio_service

    out: dict = {}
    async with AsyncExitStack() as stack:
        for relay in relays.values():
            for service in relay.services():
                await stack.enter_async_context(background_trio_service(service))
        for host in hosts.values():
            await stack.enter_async_context(host.run(listen))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relays["relay"].run)
            nursery.start_soon(relays["off"].run)
            async with trio.open_nursery() as dials:  # at once: each connect costs about 250 ms
                for client in ("c1", "c2"):
                    for server in ("relay", "off"):
                        dials.start_soon(hosts[client].connect, info_from_p2p_addr(hosts[server].get_addrs()[0]))
            assert relays["relay"].serving and not relays["off"].serving
            nursery.start_soon(relays["c1"].run)
            with trio.move_on_after(8):
                while not relays["c1"].reserved:
                    await trio.sleep(0.1)
            nursery.start_soon(relays["c2"].run)
            ids = {name: h.get_id().to_base58() for name, h in hosts.items()}
            with trio.move_on_after(8):  # until c2 has asked both and been refused by both
                while not {ids["relay"], ids["off"]} <= set(relays["c2"]._retry_at):
                    await trio.sleep(0.1)
            out = {name: (r.serving, sorted(r.reserved), sorted(r._retry_at)) for name, r in relays.items()}
            out["ids"] = ids
            nursery.cancel_scope.cancel()
        for host in hosts.values():
            await host.close()
    return out


def test_a_public_relay_serves_within_its_reservation_limit_and_one_turned_off_serves_nobody():
    out = trio.run(_relay_limits_run)
    ids = out["ids"]
    assert out["relay"][0] is True and out["off"][0] is False
    assert out["c1"][1] == [ids["relay"]] and ids["off"] in out["c1"][2]  # the one slot; the node with the service off refused
    assert out["c2"][1] == [] and ids["relay"] in out["c2"][2]  # max_reservations=1: refused


def test_the_nat_lab_names_what_is_missing(monkeypatch):
    import netns_lab

    monkeypatch.setattr(netns_lab.os, "geteuid", lambda: 1000)
    assert netns_lab.missing_requirements() == "needs root (network namespaces)"
    monkeypatch.setattr(netns_lab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns_lab.shutil, "which", lambda tool: None if tool == "iptables" else f"/usr/sbin/{tool}")
    assert "needs the 'iptables' command" in netns_lab.missing_requirements()

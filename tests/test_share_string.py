"""The p2pgolf:// share string (node/share_string.py, SPEC 11.1): the SPEC's test vector, round
trips, a one-line error naming what is wrong for every kind of bad string (and nothing but that
error for any text), `p2pgolf id` printing one, `join --bootstrap` refusing a bad one before it
starts, and Discovery trying a pinned peer's further addresses when the first does not answer."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgolf.node.cli import cli
from p2pgolf.node.share_string import MAX_ADDRS, PREFIX, ShareStringError, decode, encode, expand_peer_addrs
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
SPEC = (Path(__file__).resolve().parents[1] / "protocol" / "SPEC.md").read_text()
SECTION = SPEC[SPEC.index("### 11.1 Share strings"):SPEC.index("### 11.2 ")]
VECTOR_KEY = Identity.from_seed(bytes(range(32)))
VECTOR_ADDRS = ["/ip4/203.0.113.7/tcp/4001", "/ip6/2001:db8::7/tcp/4001"]


def spec_value(label: str) -> str:
    return re.search(rf"^{re.escape(label)}\s+(\S+)$", SECTION, re.M).group(1)


def with_checksum(payload: bytes) -> str:
    body = payload + hashlib.sha256(payload).digest()[:4]
    return PREFIX + base64.b32encode(body).decode().rstrip("=").lower()


def test_the_spec_vector_is_what_encode_writes_and_decode_reads():
    text = spec_value("share string:")
    assert encode(VECTOR_KEY.peer_id, VECTOR_ADDRS) == text
    assert spec_value("peer id:") == VECTOR_KEY.peer_id
    raw = bytes.fromhex(spec_value("payload+checksum (hex):"))
    assert raw[:1] == b"\x01" and raw[1:33].hex() == VECTOR_KEY.public_hex and with_checksum(raw[:-4]) == text
    assert decode(text) == [f"{a}/p2p/{VECTOR_KEY.peer_id}" for a in VECTOR_ADDRS]
    assert decode("  " + text.upper() + "\n") == decode(text)  # case and white space do not matter


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ip4", "ip6"]), st.integers(0, 2**32 - 1), st.integers(1, 65535)), min_size=1, max_size=MAX_ADDRS, unique=True))
def test_any_set_of_tcp_addresses_round_trips(addrs):
    import ipaddress

    texts = [f"/ip4/{ipaddress.IPv4Address(n)}/tcp/{port}" if kind == "ip4" else f"/ip6/{ipaddress.IPv6Address(n << 96)}/tcp/{port}" for kind, n, port in addrs]
    texts = list(dict.fromkeys(texts))
    text = encode(VECTOR_KEY.peer_id, texts)
    assert re.fullmatch(r"p2pgolf://[a-z2-7]+", text)
    assert decode(text) == [f"{t}/p2p/{VECTOR_KEY.peer_id}" for t in texts]


def test_every_single_character_typo_in_the_vector_is_refused():
    text = spec_value("share string:")
    body = text[len(PREFIX):]
    for pos in range(len(body)):
        for char in "a7" if body[pos] not in "a7" else "b6":
            with pytest.raises(ShareStringError):
                decode(PREFIX + body[:pos] + char + body[pos + 1:])


@pytest.mark.parametrize(
    "text, reason",
    [
        ("/ip4/1.2.3.4/tcp/1", "does not start with p2pgolf://"),
        ("p2pgolf://abc1def", "character '1' at position 14 is not one of a-z, 2-7"),
        ("p2pgolf://a", "cannot be base32"),
        ("p2pgolf://aaaaaaaa", "too short"),
        (spec_value("share string:")[:-8], "checksum mismatch"),
        (with_checksum(b"\x02" + bytes(32) + b"\x01\x08" + bytes.fromhex("04cb007107060fa1")), "version 2 is not known"),
        (with_checksum(b"\x01" + bytes(32) + b"\x00"), "lists 0 addresses"),
        (with_checksum(b"\x01" + bytes(32) + b"\x01\x09" + bytes.fromhex("04cb007107060fa1")), "address 1 of 1 is cut short"),
        (with_checksum(b"\x01" + bytes(32) + b"\x01\x02\xff\x01"), "address 1 of 1 (hex ff01) is not a binary multiaddr"),
        (with_checksum(b"\x01" + bytes(32) + b"\x01\x05" + bytes.fromhex("04cb007107")), "is not a TCP address"),
        (with_checksum(b"\x01" + bytes(32) + b"\x01\x08" + bytes.fromhex("04cb007107060fa1") + b"\x00"), "1 bytes follow the last address"),
        (PREFIX + "a" * 2000, "too long"),
    ],
)
def test_a_bad_string_gets_one_line_naming_what_is_wrong(text, reason):
    with pytest.raises(ShareStringError) as info:
        decode(text)
    assert reason in str(info.value) and "\n" not in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_decode_raises_nothing_but_its_own_error_for_any_text(text):
    try:
        decode(PREFIX + text)
    except ShareStringError:
        pass


def test_encode_refuses_what_a_share_string_cannot_carry():
    other = Identity.generate().peer_id
    with pytest.raises(ValueError, match="not an address of"):
        encode(VECTOR_KEY.peer_id, [f"/ip4/1.2.3.4/tcp/1/p2p/{other}"])
    with pytest.raises(ValueError, match="1 to 8 addresses, not 0"):
        encode(VECTOR_KEY.peer_id, [])


def test_bootstrap_values_mix_share_strings_and_multiaddrs_and_name_a_bad_one():
    text = spec_value("share string:")
    plain = f"/ip4/198.51.100.1/tcp/4001/p2p/{Identity.generate().peer_id}"
    assert expand_peer_addrs([text, plain, text]) == [*decode(text), plain]
    with pytest.raises(ProtocolError, match=r"^bootstrap: share string p2pgolf://aeb2.*\.\.\.: checksum mismatch"):
        expand_peer_addrs([text[:-8]])


def test_id_prints_a_share_string_of_its_addresses_and_join_refuses_a_bad_one_before_starting(tmp_path):
    home = tmp_path / "home"
    runner = CliRunner()
    assert runner.invoke(cli, ["--home", str(home), "init"]).exit_code == 0
    (home / "listen_port").write_text("4001\n")
    import json

    shown = json.loads(runner.invoke(cli, ["--home", str(home), "id", "--json"]).output)
    assert decode(shown["share"]) == shown["addrs"] and shown["addrs"]
    assert f"share:      {shown['share']}\n" in runner.invoke(cli, ["--home", str(home), "id"]).output
    bad = runner.invoke(cli, ["--home", str(home), "join", "--bench", "smoke", "--no-train", "--bootstrap", shown["share"][:-3]])
    assert bad.exit_code == 2
    assert "share string p2pgolf://" in bad.output and "cannot be base32" in bad.output
    assert not (home / "known_peers.toml").exists()  # nothing started, nothing written


def test_a_pinned_peer_whose_first_address_is_dead_is_reached_at_its_next_one(monkeypatch):
    import multiaddr

    import p2pgolf.node.discovery as discovery
    from p2pgolf.node.host import full_addrs, make_host
    from node_procs import free_port

    monkeypatch.setattr(discovery, "BACKOFF_START_S", 0.05)
    monkeypatch.setattr(discovery, "WATCH_INTERVAL_S", 0.05)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]

    async def main() -> None:
        a, b = (make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(2))
        async with a.run(listen), b.run(listen), trio.open_nursery() as nursery:
            b_id = b.get_id().to_base58()
            share = encode(b_id, [f"/ip4/127.0.0.1/tcp/{free_port()}", full_addrs(b)[0]])
            d = discovery.Discovery(a, pinned=frozenset({b_id}))
            await nursery.start(d.run, expand_peer_addrs([share]))
            assert len(d.alternates[b_id]) == 1
            with trio.fail_after(15):
                while not d.is_connected(b_id):
                    await trio.sleep(0.05)
            assert d.failed_dials >= 1  # the dead address first, then the live one
            nursery.cancel_scope.cancel()

    trio.run(main)

"""config.toml and the remembered peers: what is read, and how mistakes are named."""

from __future__ import annotations

import pytest

from p2pgolf.node.config import load_config, load_known_peers, save_known_peers
from p2pgolf.node.home import Home
from p2pgolf.node.host import DEFAULT_LISTEN, parse_listen, parse_peer_addr
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity

PEER = f"/ip4/127.0.0.1/tcp/4001/p2p/{Identity.generate().peer_id}"


def test_missing_config_gives_safe_defaults(tmp_path):
    config = load_config(Home(tmp_path))
    assert config.listen == (DEFAULT_LISTEN,) == ("/ip4/127.0.0.1/tcp/0",)
    assert config.bootstrap == () and config.mdns is False


def test_config_file_sets_bootstrap_listen_mdns_and_limits(tmp_path):
    (tmp_path / "config.toml").write_text(
        f'[network]\nbootstrap = ["{PEER}"]\nlisten = ["/ip4/0.0.0.0/tcp/4001"]\nmdns = true\n\n[limits]\nunknown_key_cap = 50\n'
    )
    config = load_config(Home(tmp_path))
    assert config.bootstrap == (PEER,)
    assert config.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert config.mdns is True
    assert config.limits.unknown_key_cap == 50


@pytest.mark.parametrize(
    "text,named",
    [
        ('[network]\nbootstrap = ["/ip4/1.2.3.4/tcp/1"]\n', "/p2p/"),
        ('[network]\nlisten = ["/ip4/127.0.0.1/udp/5"]\n', "/ip4/127.0.0.1/udp/5"),
        ("[network]\nmdns = 1\n", "network.mdns"),
        ("[network]\nbootstrapp = []\n", "bootstrapp"),
        ("[limits]\nunknown_key_cap = -3\n", "limits.unknown_key_cap"),
        ("[limitz]\n", "limitz"),
        ("[network\n", "cannot read"),
    ],
)
def test_bad_config_is_refused_naming_the_file_and_the_field(tmp_path, text, named):
    (tmp_path / "config.toml").write_text(text)
    with pytest.raises(ProtocolError) as info:
        load_config(Home(tmp_path))
    assert named in str(info.value) and "config.toml" in str(info.value)


def test_known_peers_survive_a_restart_newest_first_without_duplicates(tmp_path):
    home = Home(tmp_path)
    other = f"/ip4/127.0.0.1/tcp/4002/p2p/{Identity.generate().peer_id}"
    save_known_peers(home, [other, PEER, other])
    assert load_known_peers(home) == [other, PEER]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_damaged_known_peers_file_is_skipped_line_by_line_not_fatal(tmp_path):
    (tmp_path / "known_peers.toml").write_text(f'peers = ["{PEER}", "not an address", 7]\n')
    assert load_known_peers(Home(tmp_path)) == [PEER]
    (tmp_path / "known_peers.toml").write_text("peers = [")
    assert load_known_peers(Home(tmp_path)) == []


def test_peer_addresses_must_name_an_ed25519_peer_id():
    assert parse_peer_addr(PEER).peer_id == PEER.rsplit("/", 1)[1]
    with pytest.raises(ProtocolError, match="bootstrap"):
        parse_peer_addr("/ip4/127.0.0.1/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    with pytest.raises(ProtocolError, match="listen"):
        parse_listen("hello")


def test_bootstrap_and_hand_pinned_peers_are_never_evicted_by_learned_ones(tmp_path):
    from p2pgolf.node.config import MAX_KNOWN_PEERS

    home = Home(tmp_path)
    save_known_peers(home, [], pinned=[PEER])
    text = (tmp_path / "known_peers.toml").read_text()
    by_hand = f"/ip4/127.0.0.1/tcp/4009/p2p/{Identity.generate().peer_id}"
    (tmp_path / "known_peers.toml").write_text(text.replace("pinned = [", f'pinned = [\n    "{by_hand}",'))
    learned = [f"/ip4/127.0.0.1/tcp/{5000 + i}/p2p/{Identity.generate().peer_id}" for i in range(MAX_KNOWN_PEERS + 10)]
    for addr in learned:  # one at a time, newest first, as a node remembers them
        save_known_peers(home, [addr, *load_known_peers(home)])
    kept = load_known_peers(home)
    assert kept[:2] == [by_hand, PEER]  # pinned first, both still there
    assert kept[2:] == learned[::-1][:MAX_KNOWN_PEERS]  # the newest learned ones, up to the cap

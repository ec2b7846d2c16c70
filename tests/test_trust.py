"""TrustStore: statuses, weights and the allowed transitions, persisted in the pool file."""

from __future__ import annotations

import math

import pytest

import recordgen as g
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustError, TrustStore, normalise_key

ME, ALICE, BOB = g.identity(1), g.identity(2), g.identity(3)


@pytest.fixture
def trust(tmp_path):
    with TrustStore(tmp_path / "pool.sqlite") as t:
        t.set_own(ME.public_hex)
        yield t


def test_weights_follow_status_own_pinned_unknown_blocked(trust):
    trust.pin(ALICE.public_hex, "alice")
    trust.block(BOB.public_hex)
    stranger = g.identity(9).public_hex
    assert [trust.status(k) for k in (ME.public_hex, ALICE.public_hex, BOB.public_hex, stranger)] == ["own", "pinned", "blocked", "unknown"]
    assert [trust.weight(k) for k in (ME.public_hex, ALICE.public_hex, BOB.public_hex, stranger)] == [1.0, 1.0, 0.0, 0.1]
    assert trust.own_key == ME.public_hex


def test_a_peer_id_names_the_same_key_as_its_hex(trust):
    assert normalise_key(ALICE.peer_id) == ALICE.public_hex
    assert normalise_key(ALICE.public_hex.upper()) == ALICE.public_hex
    trust.pin(ALICE.peer_id, "alice")
    assert trust.status(ALICE.public_hex) == "pinned"
    assert trust.entry(ALICE.public_hex).peer_id == ALICE.peer_id


@pytest.mark.parametrize("bad", ["", "abc", "zz" * 32, "12D3KooWnotapeer", 42])
def test_malformed_keys_are_refused_naming_the_value(trust, bad):
    with pytest.raises(TrustError, match="key"):
        trust.pin(bad, "x")
    assert trust.entries() == [trust.entry(ME.public_hex)]


def test_block_overrides_a_pin_and_keeps_its_label(trust):
    trust.pin(ALICE.public_hex, "alice")
    assert trust.block(ALICE.public_hex) == "pinned"
    entry = trust.entry(ALICE.public_hex)
    assert (entry.status, entry.label) == ("blocked", "alice")
    assert trust.weight(ALICE.public_hex) == 0.0


def test_a_blocked_key_cannot_be_pinned_until_unblocked(trust):
    trust.block(BOB.public_hex, "spammer")
    with pytest.raises(TrustError, match="blocked.*unblock"):
        trust.pin(BOB.public_hex, "bob")
    assert trust.status(BOB.public_hex) == "blocked"
    assert trust.unblock(BOB.public_hex) == "blocked"
    assert trust.status(BOB.public_hex) == "unknown"  # not back to pinned: trust is explicit
    assert trust.pin(BOB.public_hex, "bob") == "unknown"


def test_the_own_key_can_be_neither_pinned_nor_blocked(trust):
    with pytest.raises(TrustError, match="own key"):
        trust.pin(ME.public_hex, "me")
    with pytest.raises(TrustError, match="own key"):
        trust.block(ME.peer_id)
    assert trust.status(ME.public_hex) == "own"


def test_unpin_and_unblock_refuse_keys_in_another_state(trust):
    trust.pin(ALICE.public_hex, "alice")
    with pytest.raises(TrustError, match="not pinned .it is unknown"):
        trust.unpin(BOB.public_hex)
    with pytest.raises(TrustError, match="not blocked .it is pinned"):
        trust.unblock(ALICE.public_hex)
    assert trust.unpin(ALICE.public_hex) == "pinned"
    assert trust.status(ALICE.public_hex) == "unknown" and trust.entry(ALICE.public_hex) is None


def test_repinning_changes_the_label_but_not_the_since_time(trust):
    trust.pin(ALICE.public_hex, "alice")
    since = trust.entry(ALICE.public_hex).since_ms
    assert trust.pin(ALICE.public_hex, "alice (lab)") == "pinned"
    assert trust.entry(ALICE.public_hex).label == "alice (lab)"
    assert trust.entry(ALICE.public_hex).since_ms == since
    assert trust.labels() == {ME.public_hex: "this node", ALICE.public_hex: "alice (lab)"}
    assert trust.find_label("alice (lab)") == [ALICE.public_hex]


def test_labels_with_control_characters_or_too_long_are_refused(trust):
    with pytest.raises(TrustError, match="control"):
        trust.pin(ALICE.public_hex, "ali\x1bce")
    with pytest.raises(TrustError, match="at most 80"):
        trust.pin(ALICE.public_hex, "a" * 81)
    assert trust.status(ALICE.public_hex) == "unknown"


def test_a_new_own_key_turns_the_old_one_into_a_pinned_key(trust):
    assert trust.set_own(ALICE.public_hex) == "unknown"
    assert trust.own_key == ALICE.public_hex
    old = trust.entry(ME.public_hex)
    assert (old.status, old.label) == ("pinned", "previous own key")
    assert [e.status for e in trust.entries()] == ["own", "pinned"]


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.5, 1.5, math.nan, math.inf, True, "0.5"])
def test_unknown_weight_must_lie_strictly_between_zero_and_one(trust, bad):
    with pytest.raises(TrustError, match="strictly between 0 and 1"):
        trust.unknown_weight = bad
    assert trust.unknown_weight == 0.1


def test_settings_and_entries_persist_and_are_shared_with_the_pool(tmp_path):
    path = tmp_path / "pool.sqlite"
    with TrustStore(path) as t:
        t.set_own(ME.public_hex)
        t.pin(ALICE.public_hex, "alice")
        t.unknown_weight = 0.25
    with PoolStore(path) as store:
        shared = TrustStore(store)
        assert shared.unknown_weight == 0.25
        assert shared.weight(g.identity(7).public_hex) == 0.25
        assert [(e.key, e.status, e.label) for e in shared.entries()] == [
            (ME.public_hex, "own", "this node"),
            (ALICE.public_hex, "pinned", "alice"),
        ]
        shared.block(BOB.public_hex)
        shared.close()  # does not close the pool's connection
        assert store.count() == 0
    with TrustStore(path) as again:
        assert again.status(BOB.public_hex) == "blocked"

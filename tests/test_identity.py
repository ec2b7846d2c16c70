"""The identity key file: created 0600, never overwritten, refused when exposed, never printed."""

from __future__ import annotations

import os
import stat

import pytest

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import KeyFileError, create_identity, load_identity, peer_id_from_public_key, public_key_from_peer_id


def test_created_key_file_is_readable_only_by_its_owner(tmp_path):
    path = tmp_path / "home" / "identity.key"
    identity = create_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_identity(path).public_hex == identity.public_hex


def test_existing_identity_is_never_overwritten(tmp_path):
    path = tmp_path / "identity.key"
    first = create_identity(path)
    with pytest.raises(KeyFileError, match="already exists"):
        create_identity(path)
    assert load_identity(path).public_hex == first.public_hex


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "identity.key"
    create_identity(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="accessible by other users"):
        load_identity(path)


def test_missing_and_malformed_key_files_get_clear_errors(tmp_path):
    with pytest.raises(KeyFileError, match="p2pgolf init"):
        load_identity(tmp_path / "nope.key")
    bad = tmp_path / "bad.key"
    bad.write_text("hello\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyFileError, match="not a p2pgolf key file"):
        load_identity(bad)


def test_private_key_never_appears_in_repr(tmp_path):
    identity = create_identity(tmp_path / "identity.key")
    text = repr(identity) + str(identity)
    assert identity.seed.hex() not in text
    assert identity.seed.hex()[:16] not in text


def test_peer_id_round_trips_to_the_public_key(tmp_path):
    identity = create_identity(tmp_path / "identity.key")
    assert identity.peer_id.startswith("12D3KooW")
    assert public_key_from_peer_id(identity.peer_id) == identity.public_key
    assert peer_id_from_public_key(identity.public_key) == identity.peer_id
    with pytest.raises(ProtocolError, match="not the peer id of an Ed25519 key"):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")

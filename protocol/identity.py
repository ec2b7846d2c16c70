"""A node's identity: one Ed25519 key that signs records and is its libp2p peer id.

The key file holds the 32-byte seed as hex on one line under a header, created with mode 0600.
`load_identity` refuses a key file that anyone but its owner can read or write. The private
key never appears in `repr`, logs or any message.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import base58
import nacl.signing

from p2pgolf.protocol.errors import ProtocolError

KEY_FILE_HEADER = "p2pgolf-ed25519-seed-v1"
# libp2p peer id of an Ed25519 key: identity multihash (0x00, length 36) of the protobuf
# PublicKey {Type: Ed25519 (1), Data: 32 bytes} = 08 01 12 20 || key.
_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


class KeyFileError(ProtocolError):
    """The key file is missing, unreadable, malformed or exposed to other users."""


@dataclass(frozen=True)
class Identity:
    """This node's signing key. `public_hex` is the record author; `peer_id` the libp2p id."""

    signing_key: nacl.signing.SigningKey = field(repr=False)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def public_hex(self) -> str:
        return self.public_key.hex()

    @property
    def seed(self) -> bytes:
        """The 32 private bytes, for handing to libp2p's key type; never print them."""
        return bytes(self.signing_key)

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(self.public_key)

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        if len(seed) != 32:
            raise KeyFileError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def generate(cls) -> "Identity":
        return cls(nacl.signing.SigningKey.generate())


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id string (12D3KooW...) of a 32-byte Ed25519 public key."""
    if len(public_key) != 32:
        raise ProtocolError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
    return base58.b58encode(_PEER_ID_PREFIX + public_key).decode()


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The Ed25519 public key inside a 12D3KooW... peer id; ProtocolError for any other id."""
    try:
        raw = base58.b58decode(peer_id)
    except ValueError:
        raise ProtocolError(f"{peer_id!r} is not a base58 peer id") from None
    if len(raw) != 38 or not raw.startswith(_PEER_ID_PREFIX):
        raise ProtocolError(f"{peer_id!r} is not the peer id of an Ed25519 key")
    return raw[6:]


def create_identity(path: Path) -> Identity:
    """Write a new key file at `path` (mode 0600). Refuses to overwrite an existing file."""
    identity = Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite an identity") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{KEY_FILE_HEADER}\n{identity.seed.hex()}\n")
    return identity


def load_identity(path: Path) -> Identity:
    """Read the key file at `path`; refuse one that other users can read or write."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"no identity at {path}; run `p2pgolf init` first") from None
    if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path} is accessible by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 600 {path}` if it was never exposed, otherwise create a new identity"
        )
    try:
        lines = path.read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    if len(lines) != 2 or lines[0] != KEY_FILE_HEADER:
        raise KeyFileError(f"{path} is not a p2pgolf key file")
    try:
        seed = bytes.fromhex(lines[1])
    except ValueError:
        raise KeyFileError(f"{path} is not a p2pgolf key file (bad hex)") from None
    return Identity.from_seed(seed)

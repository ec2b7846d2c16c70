"""The share string: one node's peer id and addresses as one short `p2pgolf://...` string.

A user passes it on (chat, e-mail, a forum post) instead of a multiaddr, and `join --bootstrap`
takes it as it takes a multiaddr. No DNS and no server is involved: the string itself carries
the addresses. protocol/SPEC.md section 11.1 is the format, with a test vector:

    p2pgolf://<base32 of: version 1 | public key (32 bytes) | address count (1 byte)
               | per address: length (1 byte) + the multiaddr's binary form, without /p2p/
               | the first 4 bytes of SHA-256 of everything before>

Base32 is RFC 4648's alphabet in lower case without padding (a-z, 2-7): no character that a
shell, a URL or a chat program changes, and a double click selects all of it. Decoding accepts
upper case and surrounding white space. `decode` guarantees a one-line ShareStringError naming
what is wrong (the prefix, a character and its position, the checksum, the version, an
address) and never reads more than MAX_CHARS characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import peer_id_from_public_key, public_key_from_peer_id

PREFIX = "p2pgolf://"
VERSION = 1
MAX_ADDRS = 8
MAX_CHARS = 1024  # a longer string is refused before any decoding
CHECKSUM_BYTES = 4
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


class ShareStringError(ProtocolError):
    """A string that is not a valid share string; the message says what is wrong."""

    def __init__(self, message: str) -> None:
        self.reason = message
        super().__init__(message, "share string")


def encode(peer_id: str, addrs: list[str]) -> str:
    """The share string of `peer_id` (an Ed25519 12D3KooW... id) reachable at `addrs`
    (multiaddrs, with or without /p2p/<peer_id> at the end; duplicates dropped, order kept).
    ValueError for no address, more than MAX_ADDRS, or an address of another peer."""
    import multiaddr

    public_key = public_key_from_peer_id(peer_id)
    suffix = f"/p2p/{peer_id}"
    plain = []
    for addr in addrs:
        if "/p2p/" in addr and not addr.endswith(suffix):
            raise ValueError(f"{addr} is not an address of {peer_id}")
        plain.append(addr[: -len(suffix)] if addr.endswith(suffix) else addr)
    plain = list(dict.fromkeys(plain))
    if not plain or len(plain) > MAX_ADDRS:
        raise ValueError(f"a share string carries 1 to {MAX_ADDRS} addresses, not {len(plain)}")
    body = bytearray([VERSION]) + public_key + bytes([len(plain)])
    for text in plain:
        raw = multiaddr.Multiaddr(text).to_bytes()
        if len(raw) > 255:
            raise ValueError(f"{text} is longer than 255 bytes in binary form")
        body += bytes([len(raw)]) + raw
    body += hashlib.sha256(body).digest()[:CHECKSUM_BYTES]
    return PREFIX + base64.b32encode(bytes(body)).decode().rstrip("=").lower()


def decode(text: str) -> list[str]:
    """The peer multiaddrs (each ending in /p2p/<peer id>) a share string carries, in its order.
    ShareStringError naming the first thing wrong."""
    import multiaddr

    text = text.strip()
    if len(text) > MAX_CHARS:
        raise ShareStringError(f"{len(text)} characters is too long for a share string (at most {MAX_CHARS})")
    if not text.lower().startswith(PREFIX):
        raise ShareStringError(f"{_short(text)!r} does not start with {PREFIX}")
    data = text[len(PREFIX):].lower()
    for pos, char in enumerate(data):
        if char not in _ALPHABET:
            raise ShareStringError(f"character {char!r} at position {len(PREFIX) + pos + 1} is not one of a-z, 2-7 (the string may have been changed when it was copied)")
    try:
        body = base64.b32decode(data.upper() + "=" * (-len(data) % 8))
    except binascii.Error:
        raise ShareStringError(f"{len(data)} characters after {PREFIX} cannot be base32 (the string was probably cut short)") from None
    if len(body) < 1 + 32 + 1 + CHECKSUM_BYTES:
        raise ShareStringError(f"only {len(body)} bytes: too short for a share string (the string was probably cut short)")
    payload, checksum = body[:-CHECKSUM_BYTES], body[-CHECKSUM_BYTES:]
    if hashlib.sha256(payload).digest()[:CHECKSUM_BYTES] != checksum:
        raise ShareStringError("checksum mismatch: a character was mistyped, or the string was cut short or joined to other text")
    if payload[0] != VERSION:
        raise ShareStringError(f"version {payload[0]} is not known to this p2pgolf (it reads version {VERSION}); update p2pgolf")
    peer_id = peer_id_from_public_key(payload[1:33])
    count, pos, out = payload[33], 34, []
    if not 1 <= count <= MAX_ADDRS:
        raise ShareStringError(f"it lists {count} addresses; a share string has 1 to {MAX_ADDRS}")
    for n in range(1, count + 1):
        if pos >= len(payload) or pos + 1 + payload[pos] > len(payload):
            raise ShareStringError(f"address {n} of {count} is cut short")
        raw = payload[pos + 1 : pos + 1 + payload[pos]]
        pos += 1 + len(raw)
        try:
            addr = str(multiaddr.Multiaddr(raw))
        except Exception:
            raise ShareStringError(f"address {n} of {count} (hex {raw.hex()[:40]}) is not a binary multiaddr") from None
        if "/tcp/" not in addr:
            raise ShareStringError(f"address {n} of {count}, {addr}, is not a TCP address")
        out.append(f"{addr}/p2p/{peer_id}")
    if pos != len(payload):
        raise ShareStringError(f"{len(payload) - pos} bytes follow the last address")
    return out


def is_share_string(text: str) -> bool:
    return text.strip().lower().startswith(PREFIX)


def expand_peer_addrs(values: list[str] | tuple[str, ...]) -> list[str]:
    """Each value as peer multiaddrs: a share string gives its addresses, a multiaddr itself.
    ProtocolError (one line, naming the value) for a bad share string or a bad multiaddr."""
    from p2pgolf.node.host import parse_peer_addr

    out = []
    for value in values:
        if is_share_string(value):
            try:
                addrs = decode(value)
            except ShareStringError as exc:
                raise ProtocolError(f"share string {_short(value.strip())}: {exc.reason}", "bootstrap") from None
        else:
            addrs = [value]
        out += [parse_peer_addr(a).addr for a in addrs]
    return list(dict.fromkeys(out))


def _short(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."

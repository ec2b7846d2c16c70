"""Signed records on the wire: the envelope, record ids and Ed25519 signatures.

Envelope = canonical msgpack map {"body": bin, "sig": bin(64)}, at most 16 KiB, where `body`
is the canonical encoding of the record map. Record id = SHA-256(RECORD_DOMAIN || body), and
`sig` is the author's Ed25519 signature over the 32 id bytes, verified by the rule of SPEC.md
section 6.1 (protocol/ed25519_rule.py, then libsodium's cofactorless equation). `decode_record`
is the only way bytes from a peer become a `SignedRecord`, and it raises only `ProtocolError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import nacl.exceptions
import nacl.signing

from p2pgolf.protocol import canonical
from p2pgolf.protocol.ed25519_rule import encoding_problem
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.records import Record, parse_body

RECORD_DOMAIN = b"p2pgolf/record/v1\n"
MAX_RECORD_BYTES = 16 * 1024


@dataclass(frozen=True)
class SignedRecord:
    """A validated, verified record with its id and exact wire bytes."""

    id: str
    record: Record
    body: bytes
    signature: bytes
    raw: bytes

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def author(self) -> str:
        return self.record.author

    @property
    def bench(self) -> str:
        return self.record.bench

    @property
    def created_ms(self) -> int:
        return self.record.created_ms


def record_id(body: bytes) -> bytes:
    """The 32-byte id of a canonical record body."""
    return hashlib.sha256(RECORD_DOMAIN + body).digest()


def sign_record(record: Record, signing_key: nacl.signing.SigningKey) -> SignedRecord:
    """Encode, sign and return `record`; its author must be this key's public key."""
    public_hex = bytes(signing_key.verify_key).hex()
    if record.author != public_hex:
        raise ProtocolError(f"record author {record.author[:16]}... is not the signing key {public_hex[:16]}...", "author")
    wire = record.to_wire()
    body = canonical.encode(wire)
    parse_body(canonical.decode(body, max_len=MAX_RECORD_BYTES))  # never sign what peers would reject
    rid = record_id(body)
    signature = signing_key.sign(rid).signature
    raw = seal_envelope(body, signature, "record")
    return SignedRecord(id=rid.hex(), record=record, body=body, signature=signature, raw=raw)


def seal_envelope(body: bytes, signature: bytes, what: str) -> bytes:
    """The wire bytes {body, sig} of a signed `what` (a record, an announcement); ProtocolError
    if they exceed MAX_RECORD_BYTES."""
    raw = canonical.encode({"body": body, "sig": signature})
    if len(raw) > MAX_RECORD_BYTES:
        raise ProtocolError(f"signed {what} is {len(raw)} bytes; at most {MAX_RECORD_BYTES}")
    return raw


def open_envelope(raw: bytes) -> tuple[bytes, bytes]:
    """(body, signature) of a signed envelope, unverified. Raises ProtocolError naming what is
    malformed: the envelope's keys, a body that is not binary, a signature not 64 bytes."""
    split = _split_envelope(raw)
    if split is None:  # not the one canonical layout: decode generically for a precise error
        envelope = canonical.decode(raw, max_len=MAX_RECORD_BYTES)
        if not isinstance(envelope, dict) or set(envelope) != {"body", "sig"}:
            raise ProtocolError("envelope must be a map with exactly the fields body and sig")
        split = envelope["body"], envelope["sig"]
    body, signature = split
    if type(body) is not bytes:
        raise ProtocolError("must be binary", "body")
    if type(signature) is not bytes or len(signature) != 64:
        raise ProtocolError("must be 64 bytes of binary", "sig")
    return body, signature


def decode_record(raw: bytes, *, now_ms: int | None = None) -> SignedRecord:
    """Decode, validate and verify an envelope from anywhere. Raises only ProtocolError."""
    body, signature = open_envelope(raw)
    record = parse_body(canonical.decode(body, max_len=MAX_RECORD_BYTES), now_ms=now_ms)
    rid = record_id(body)
    verify_signature(record.author, rid, signature)
    return SignedRecord(id=rid.hex(), record=record, body=body, signature=signature, raw=bytes(raw))


def verify_signature(author_hex: str, message: bytes, signature: bytes) -> None:
    """Ed25519 verification by SPEC.md section 6.1: libsodium's cofactorless equation with R
    compared byte for byte, and the encoding rules of protocol/ed25519_rule.py, which our
    libsodium also applies but a laxer build might not. Raises ProtocolError ("sig: signature
    does not verify against the author key", with the rule broken when only ours caught it)."""
    try:
        _verify_key(author_hex).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        raise ProtocolError("signature does not verify against the author key", "sig") from None
    problem = encoding_problem(bytes.fromhex(author_hex), signature)
    if problem is not None:
        raise ProtocolError(f"signature does not verify against the author key ({problem[0]}: {problem[1]})", "sig")


_ENVELOPE_HEAD = b"\x82\xa4body"
_SIG_HEAD = b"\xa3sig\xc4\x40"


def _split_envelope(raw: bytes) -> tuple[bytes, bytes] | None:
    """(body, sig) if `raw` has exactly the canonical envelope layout, else None.

    Canonical form leaves one layout: fixmap(2), "body", bin8 (or bin16 when the body is 256
    bytes or more), the body, "sig", bin8 of 64 bytes, the signature, and nothing after it.
    """
    if not isinstance(raw, (bytes, bytearray)) or not raw.startswith(_ENVELOPE_HEAD) or len(raw) > MAX_RECORD_BYTES:
        return None
    marker = raw[6] if len(raw) > 6 else None
    if marker == 0xC4 and len(raw) > 7:
        size, start = raw[7], 8
    elif marker == 0xC5 and len(raw) > 8:
        size, start = int.from_bytes(raw[7:9], "big"), 9
        if size < 256:
            return None
    else:
        return None
    end = start + size
    if len(raw) != end + len(_SIG_HEAD) + 64 or raw[end : end + len(_SIG_HEAD)] != _SIG_HEAD:
        return None
    return bytes(raw[start:end]), bytes(raw[end + len(_SIG_HEAD) :])


@lru_cache(maxsize=4096)
def _verify_key(author_hex: str) -> nacl.signing.VerifyKey:
    try:
        return nacl.signing.VerifyKey(bytes.fromhex(author_hex))
    except Exception:
        raise ProtocolError("is not a valid Ed25519 public key", "author") from None

"""A signed record is all-or-nothing: no single-byte change survives verification."""

from __future__ import annotations

import pytest

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import decode_record
from records_factory import H100, signed_result

IDENTITY = Identity.from_seed(bytes(range(32)))


@pytest.fixture(scope="module")
def signed():
    return signed_result(IDENTITY, diff={"activation": "swiglu", "unique_blocks": 1}, parents=("ab" * 32,), hw=H100, note="tamper me")


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_of_the_envelope_fails_verification(signed, mask):
    raw = signed.raw
    survivors = []
    for i in range(len(raw)):
        mutated = raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]
        try:
            decode_record(mutated)
        except ProtocolError:
            continue
        survivors.append(i)
    assert survivors == [], f"byte positions {survivors} could be changed without detection"


def test_every_field_of_the_body_is_covered_by_the_signature(signed):
    body = signed.body
    for i in range(len(body)):
        mutated_body = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        start = signed.raw.index(body)
        raw = signed.raw[:start] + mutated_body + signed.raw[start + len(body) :]
        with pytest.raises(ProtocolError):
            decode_record(raw)


def test_truncated_or_extended_envelope_is_rejected(signed):
    for cut in range(len(signed.raw)):
        with pytest.raises(ProtocolError):
            decode_record(signed.raw[:cut])
    with pytest.raises(ProtocolError):
        decode_record(signed.raw + b"\x00")


def test_signature_by_another_key_is_rejected(signed):
    from p2pgolf.protocol import canonical

    other = Identity.from_seed(bytes(range(1, 33)))
    forged_sig = other.signing_key.sign(bytes.fromhex(signed.id)).signature
    forged = canonical.encode({"body": signed.body, "sig": forged_sig})
    with pytest.raises(ProtocolError, match="signature does not verify"):
        decode_record(forged)

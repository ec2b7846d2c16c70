"""SPEC.md section 6.1's Ed25519 rule: each vector gets the verdict SPEC gives it from our
verifier (and from libsodium alone), and each really is the edge case it says (its equations
computed in plain Python), so a rejected forgery is rejected by the rule, not by accident."""

from __future__ import annotations

import hashlib
import json
import re

import nacl.signing
import pytest

import ed25519_math as m
from conftest import REPO_ROOT
from p2pgolf.protocol import canonical
from p2pgolf.protocol.ed25519_rule import SMALL_ORDER_Y, encoding_problem
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import decode_record, record_id, verify_signature
from records_factory import make_result

SPEC = (REPO_ROOT / "protocol" / "SPEC.md").read_text()
VECTORS = json.loads(re.search(r"### 6\.1 Signature verification.*?```json\n(.*?)\n```", SPEC, re.S).group(1))
MESSAGE = bytes.fromhex(VECTORS["message_hex"])
CASES = VECTORS["cases"]


def ours(case) -> str:
    try:
        verify_signature(case["public_key_hex"], MESSAGE, bytes.fromhex(case["sig_hex"]))
    except ProtocolError:
        return "reject"
    return "accept"


def libsodium(case) -> str:
    try:
        nacl.signing.VerifyKey(bytes.fromhex(case["public_key_hex"])).verify(MESSAGE, bytes.fromhex(case["sig_hex"]))
    except Exception:
        return "reject"
    return "accept"


def test_the_message_and_the_valid_signature_are_what_spec_says():
    assert MESSAGE == hashlib.sha256(b"p2pgolf/record/v1\n").digest() == record_id(b"")
    valid = next(c for c in CASES if c["name"] == "valid")
    me = Identity.from_seed(bytes(range(32)))
    assert valid["public_key_hex"] == me.public_hex
    assert valid["sig_hex"] == me.signing_key.sign(MESSAGE).signature.hex()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_each_vector_gets_its_verdict_from_our_verifier_and_from_libsodium(case):
    assert ours(case) == case["verdict"] == libsodium(case)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_each_vector_is_the_edge_case_it_claims(case):
    key, sig = bytes.fromhex(case["public_key_hex"]), bytes.fromhex(case["sig_hex"])
    assert m.cofactorless_equation_holds(key, MESSAGE, sig) == case["cofactorless_equation"]
    assert m.cofactored_equation_holds(key, MESSAGE, sig) == case["cofactored_equation"]


def test_the_forgeries_under_small_order_keys_and_identity_r_pass_a_lax_equation():
    lax = {c["name"] for c in CASES if c["verdict"] == "reject" and (c["cofactorless_equation"] or c["cofactored_equation"])}
    assert {"non-canonical S", "small-order key: identity", "small-order key: order 8", "identity R", "non-canonical key", "non-canonical R", "mixed-order R"} <= lax


def test_the_small_order_list_is_every_y_of_the_eight_torsion_points_plus_p_and_p_plus_1():
    torsion_y = set()
    for y in range(3, 60):
        point = m.decode(y.to_bytes(32, "little"))
        if point is not None:
            torsion_y.add(m.mul(m.L, point)[1])  # [L]Q is the torsion part of Q
    assert SMALL_ORDER_Y == torsion_y | {m.P, m.P + 1} and len(SMALL_ORDER_Y) == 7
    for y in SMALL_ORDER_Y:
        for sign in (0, 1 << 255):
            assert encoding_problem((y | sign).to_bytes(32, "little"), bytes(64)) is not None


def test_a_record_signed_under_a_small_order_key_is_refused_naming_the_author():
    """The forgery ZIP-215 would accept: any body, 'signed' by the order-8 key with R = [r]B, S = r."""
    case = next(c for c in CASES if c["name"] == "small-order key: order 8")
    forger = Identity.from_seed(bytes(32))
    body = dict(make_result(forger).to_wire(), author=case["public_key_hex"])
    raw_body = canonical.encode(body)
    r = 12345
    sig = m.encode(m.mul(r, m.B)) + r.to_bytes(32, "little")
    assert m.cofactored_equation_holds(bytes.fromhex(case["public_key_hex"]), record_id(raw_body), sig)
    with pytest.raises(ProtocolError, match="sig: signature does not verify"):
        decode_record(canonical.encode({"body": raw_body, "sig": sig}))


def test_the_rule_holds_even_under_a_libsodium_that_accepts_everything(monkeypatch):
    """A laxer libsodium build (or version) must not change which records are valid."""
    import p2pgolf.protocol.signing as signing
    class Lax:
        def verify(self, message, signature):
            return message

    monkeypatch.setattr(signing, "_verify_key", lambda author_hex: Lax())
    for case in CASES:
        if case["name"] in ("mixed-order R",):
            continue  # only the equation refuses it: a verifier that skips the equation accepts it
        assert ours(case) == case["verdict"], case["name"]

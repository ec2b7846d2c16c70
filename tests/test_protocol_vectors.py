"""SPEC.md's test vectors hold, checked with code written from the spec, not with our encoder."""

from __future__ import annotations

import hashlib
import json
import re
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pgolf.protocol import candidates, spec_tables
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import decode_record
from conftest import REPO_ROOT

SPEC = (REPO_ROOT / "protocol" / "SPEC.md").read_text()


def spec_vectors() -> dict:
    block = re.search(r"## 8\. Test vectors.*?```json\n(.*?)\n```", SPEC, re.S)
    assert block, "SPEC.md has no test-vector block"
    return json.loads(block.group(1))


def spec_encode(value) -> bytes:
    """A second canonical msgpack encoder, written from SPEC.md section 1."""
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value < 128:
            return bytes([value])
        if -32 <= value < 0:
            return struct.pack("b", value)
        if value >= 0:
            for code, fmt in ((0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q")):
                if value < 1 << (8 * struct.calcsize(fmt)):
                    return bytes([code]) + struct.pack(fmt, value)
        for code, fmt in ((0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")):
            bits = 8 * struct.calcsize(fmt)
            if -(1 << (bits - 1)) <= value:
                return bytes([code]) + struct.pack(fmt, value)
        raise ValueError(value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        data = value.encode()
        n = len(data)
        head = bytes([0xA0 | n]) if n < 32 else (b"\xd9" + struct.pack(">B", n) if n < 256 else b"\xda" + struct.pack(">H", n))
        return head + data
    if isinstance(value, bytes):
        n = len(value)
        return (b"\xc4" + struct.pack(">B", n) if n < 256 else b"\xc5" + struct.pack(">H", n)) + value
    if isinstance(value, list):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(spec_encode(v) for v in value)
    if isinstance(value, dict):
        n = len(value)
        keys = sorted(value, key=lambda k: k.encode())
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)  # a v2 result has 16 keys: map16
        return head + b"".join(spec_encode(k) + spec_encode(value[k]) for k in keys)
    raise TypeError(type(value))


VECTORS = spec_vectors()
SEED = bytes.fromhex(VECTORS["seed_hex"])


def test_spec_vector_seed_is_the_bytes_0_to_31():
    assert SEED == bytes(range(32))


def test_public_key_and_peer_id_match_the_vectors():
    identity = Identity.from_seed(SEED)
    independent = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes_raw()
    assert identity.public_hex == independent.hex() == VECTORS["public_key_hex"]
    assert identity.peer_id == VECTORS["peer_id"]


def test_peer_id_agrees_with_libp2p():
    from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pKey
    from libp2p.peer.id import ID

    libp2p_id = ID.from_pubkey(Libp2pKey.from_bytes(SEED).get_public_key()).to_base58()
    assert libp2p_id == VECTORS["peer_id"]


@pytest.mark.parametrize("vector", VECTORS["records"], ids=lambda v: v["name"])
def test_record_vector_bytes_id_and_signature(vector):
    body = spec_encode(vector["body_map"])
    assert body.hex() == vector["body_hex"]
    rid = hashlib.sha256(b"p2pgolf/record/v1\n" + body).digest()
    assert rid.hex() == vector["id"]
    signature = Ed25519PrivateKey.from_private_bytes(SEED).sign(rid)
    assert signature.hex() == vector["sig_hex"]
    envelope = spec_encode({"body": body, "sig": signature})
    assert envelope.hex() == vector["envelope_hex"]


@pytest.mark.parametrize("vector", VECTORS["records"], ids=lambda v: v["name"])
def test_our_decoder_accepts_the_vector_envelope(vector):
    signed = decode_record(bytes.fromhex(vector["envelope_hex"]))
    assert signed.id == vector["id"]
    assert signed.record.to_wire() == vector["body_map"]


def test_benchmark_id_follows_the_spec_formula_without_the_tokenizer():
    bench = benchmark(VECTORS["benchmark"]["name"])
    payload = spec_encode({"task": bench.task, "val": bench.val_digest, "budget_s": float(bench.budget_s), "size_cap": bench.size_cap})
    assert hashlib.sha256(b"p2pgolf/benchmark/v2\n" + payload).hexdigest() == bench.id == VECTORS["benchmark"]["id"]
    assert bench.topic == f"/p2pgolf/records/2/{bench.id}"


@pytest.mark.parametrize("index, key", [(0, "candidate_id"), (2, "script_candidate_id")])
def test_candidate_ids_of_both_kinds_follow_the_spec_formula(index, key):
    result = VECTORS["records"][index]["body_map"]
    assert result["v"] == 2
    payload = spec_encode({"base": result["base"], "diff": result["diff"], "tokenizer": result["tokenizer"]})
    expected = hashlib.sha256(b"p2pgolf/candidate/v2\n" + payload).hexdigest()
    assert candidates.candidate_id(result["base"], result["diff"], result["tokenizer"]) == expected == VECTORS[key]


def test_the_script_vector_is_a_script_candidate():
    signed = decode_record(bytes.fromhex(VECTORS["records"][2]["envelope_hex"]))
    assert signed.record.is_script and candidates.script_sha(signed.record.base) == "5c" * 32


def test_spec_reference_tables_match_the_code():
    assert spec_tables.render() in SPEC, "SPEC.md is stale: run `python -m p2pgolf.protocol.spec_tables`"

"""Fuzzing the decoders that read peer bytes: only ProtocolError may ever come out."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pgolf.protocol import canonical
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import decode_record, record_id
from records_factory import signed_attestation, signed_result

IDENTITY = Identity.from_seed(bytes(range(32)))
RESULT = signed_result(IDENTITY, diff={"activation": "leaky_relu2", "leaky_slope": 0.3}, parents=("cd" * 32,), note="fuzz")
ATTESTATION = signed_attestation(IDENTITY, RESULT, val_bpb=2.49)
SEEDS = [RESULT, ATTESTATION]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_rejects(raw: bytes) -> None:
    try:
        decode_record(raw)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_protocol_error(raw):
    decodes_or_rejects(raw)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["set", "insert", "delete"])), min_size=1, max_size=8))
def test_mutated_valid_records_raise_only_protocol_error(seed, edits):
    raw = bytearray(seed.raw)
    for pos, value, op in edits:
        pos %= len(raw) + 1
        if op == "set" and pos < len(raw):
            raw[pos] = value
        elif op == "insert":
            raw.insert(pos, value)
        elif op == "delete" and pos < len(raw):
            del raw[pos]
    decodes_or_rejects(bytes(raw))


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def resign(body_map) -> bytes:
    """A correctly signed envelope around any body: reaches the validator, not just the signature check."""
    body = canonical.encode(body_map)
    sig = IDENTITY.signing_key.sign(record_id(body)).signature
    return canonical.encode({"body": body, "sig": sig})


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_validly_signed_bodies_with_wrong_field_values_raise_only_protocol_error(seed, data):
    body = seed.record.to_wire()
    path = [body]
    target = body
    # descend into a nested map now and then, so nested fields (hw, metrics, diff) get fuzzed too
    while True:
        key = data.draw(st.sampled_from(sorted(target) + ["<new>"]))
        if key != "<new>" and isinstance(target[key], dict) and target[key] and data.draw(st.booleans()):
            target = target[key]
            path.append(target)
            continue
        break
    if key == "<new>":
        key = data.draw(st.text(max_size=10))
    action = data.draw(st.sampled_from(["replace", "drop"]))
    if action == "drop":
        target.pop(key, None)
    else:
        target[key] = data.draw(json_like)
    decodes_or_rejects(resign(body))


@FUZZ
@given(json_like)
def test_canonical_round_trip_of_any_encodable_value(value):
    encoded = canonical.encode(value)
    assert canonical.decode(encoded, max_len=1 << 20) == value

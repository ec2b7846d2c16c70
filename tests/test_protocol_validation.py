"""Validation names what is wrong: every rule of SPEC.md sections 1 to 4 has a rejecting case."""

from __future__ import annotations

import struct
import time

import msgpack
import pytest

from p2pgolf.protocol import canonical
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.records import MAX_NOTE_CHARS, parse_body
from p2pgolf.protocol.signing import MAX_RECORD_BYTES, decode_record, sign_record
from records_factory import make_result, signed_result

IDENTITY = Identity.from_seed(bytes(range(32)))


def body() -> dict:
    return make_result(IDENTITY, diff={"activation": "swiglu"}).to_wire()


def rejects(body_map: dict, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_body(body_map)


def test_a_valid_body_parses():
    parsed = parse_body(body())
    assert parsed.kind == "result" and parsed.diff == {"activation": "swiglu"}


def test_unknown_field_is_named():
    b = body()
    b["colour"] = "blue"
    rejects(b, r"unknown field\(s\) colour")


def test_missing_field_is_named():
    b = body()
    del b["seed"]
    rejects(b, r"missing field\(s\) seed")


def test_wrong_type_is_named():
    b = body()
    b["seed"] = "7"
    rejects(b, r"seed: must be an integer")
    b = body()
    b["budget_s"] = 60  # int where the spec says float
    rejects(b, r"budget_s: must be a float")


def test_note_longer_than_280_characters_is_rejected():
    b = body()
    b["note"] = "x" * (MAX_NOTE_CHARS + 1)
    rejects(b, r"note: 281 characters; at most 280")


def test_control_characters_in_text_are_rejected():
    b = body()
    b["note"] = "hi\x1b[31m"
    rejects(b, r"note: control characters")


def test_too_many_parents_are_rejected():
    b = body()
    b["parents"] = sorted(f"{i:064x}" for i in range(9))
    rejects(b, r"parents: must be a list of at most 8")


def test_unsorted_parents_are_rejected():
    b = body()
    b["parents"] = ["b" * 64, "a" * 64]
    rejects(b, r"parents: must be sorted")


def test_timestamp_far_in_the_future_is_rejected():
    b = body()
    b["created_ms"] = int(time.time() * 1000) + 3600_000
    rejects(b, r"created_ms: .* is outside")


def test_metric_out_of_range_is_rejected():
    b = body()
    b["metrics"]["val_bpb"] = 0.0
    rejects(b, r"metrics.val_bpb: 0.0 is outside \(0, 100\]")
    b = body()
    b["metrics"]["steps"] = -1
    rejects(b, r"metrics.steps: -1 is outside")


def test_unknown_knob_is_rejected_with_a_suggestion():
    b = body()
    b["diff"] = {"activaton": "swiglu"}
    rejects(b, r"unknown knob 'activaton' \(did you mean activation")


def test_knob_value_outside_its_range_names_knob_and_range():
    b = body()
    b["diff"] = {"num_layers": 10_000}
    rejects(b, r"knob num_layers: 10000 is outside the allowed range \[1, 64\]")


def test_knob_choice_outside_its_choices_is_rejected():
    b = body()
    b["diff"] = {"activation": "gelu"}
    rejects(b, r"knob activation: 'gelu' is not one of relu2, leaky_relu2, swiglu")


def test_diff_that_is_not_normalised_is_rejected():
    b = body()
    b["diff"] = {"num_layers": 2}  # equal to the smoke-tiny base
    rejects(b, r"not normalised")


def test_inconsistent_config_is_rejected():
    b = body()
    b["diff"] = {"num_heads": 3}
    rejects(b, r"model_dim=64 must be divisible by num_heads=3")


def test_unknown_base_config_is_rejected():
    b = body()
    b["base"] = "gpt-5"
    rejects(b, r"unknown base config 'gpt-5'")


def test_unknown_version_and_kind_are_rejected():
    b = body()
    b["v"] = 1  # version 1 bodies are no longer accepted (SPEC.md section 3)
    rejects(b, r"unsupported protocol version 1; this node speaks 2")
    b = body()
    b["v"] = 3
    rejects(b, r"unsupported protocol version 3")
    b = body()
    b["kind"] = "gossip"
    rejects(b, r"unknown record kind 'gossip'")


def test_oversize_envelope_is_rejected_before_decoding():
    with pytest.raises(ProtocolError, match=f"exceeds the limit of {MAX_RECORD_BYTES}"):
        decode_record(b"\x80" * (MAX_RECORD_BYTES + 1))


def test_encoder_refuses_nan_and_infinity():
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ProtocolError, match="NaN and infinity"):
            canonical.encode({"x": bad})


def test_non_canonical_encodings_are_rejected():
    good = canonical.encode({"a": 1, "b": 2.5})
    assert canonical.decode(good, max_len=100) == {"a": 1, "b": 2.5}
    unsorted = b"\x82" + canonical.encode("b") + canonical.encode(2.5) + canonical.encode("a") + canonical.encode(1)
    duplicate = b"\x82" + canonical.encode("a") + canonical.encode(1) + canonical.encode("a") + canonical.encode(1)
    wide_int = b"\x81" + canonical.encode("a") + b"\xcd\x00\x01"
    float32 = b"\x81" + canonical.encode("a") + b"\xca" + struct.pack(">f", 2.5)
    nan = b"\x81" + canonical.encode("a") + b"\xcb" + struct.pack(">d", float("nan"))
    ext = msgpack.packb({"a": msgpack.ExtType(5, b"xx")})
    cases = {unsorted: "not sorted", duplicate: "duplicate keys", wide_int: "canonical", float32: "canonical", nan: "NaN", ext: "extension type"}
    for raw, message in cases.items():
        with pytest.raises(ProtocolError, match=message):
            canonical.decode(raw, max_len=100)


def test_signer_refuses_a_record_it_would_reject():
    bad = make_result(IDENTITY, note="x" * 300)
    with pytest.raises(ProtocolError, match="note"):
        sign_record(bad, IDENTITY.signing_key)


def test_signer_refuses_a_record_of_another_author():
    other = Identity.from_seed(bytes(range(1, 33)))
    with pytest.raises(ProtocolError, match="author"):
        sign_record(make_result(other), IDENTITY.signing_key)


def test_envelope_with_an_extra_field_is_rejected():
    signed = signed_result(IDENTITY)
    extra = canonical.encode({"body": signed.body, "sig": signed.signature, "x": 1})
    with pytest.raises(ProtocolError, match="exactly the fields body and sig"):
        decode_record(extra)


SCRIPT = "script:" + "ab" * 32


def script_body(diff: dict, tokenizer: str = "sp8192") -> dict:
    b = body()
    b["base"], b["diff"], b["tokenizer"] = SCRIPT, diff, tokenizer
    return b


def test_a_script_candidate_parses_by_shape_alone():
    parsed = parse_body(script_body({"MATRIX_LR": 0.05, "NUM_LAYERS": 11, "TIE_EMBEDDINGS": False, "OPTIM": "muon"}))
    assert parsed.is_script and parsed.tokenizer == "sp8192"
    assert parsed.diff == {"MATRIX_LR": 0.05, "NUM_LAYERS": 11, "OPTIM": "muon", "TIE_EMBEDDINGS": False}


def test_script_base_and_diff_rules_are_named():
    b = script_body({})
    b["base"] = "script:ABC"
    rejects(b, r"not a script base")
    rejects(script_body({"matrix_lr": 0.05}), r"'matrix_lr' is not a hyperparameter name")
    rejects(script_body({"LR": -0.0}), r"hyperparameter LR: diff is not normalised")
    rejects(script_body({"LR": [1]}), r"hyperparameter LR: expected an int, float, bool or string")
    rejects(script_body({"NAME": "x" * 257}), r"hyperparameter NAME: 257 characters; at most 256")
    rejects(script_body({"NAME": "a\nb"}), r"hyperparameter NAME: control characters")
    rejects(script_body({f"K{i}": i for i in range(65)}), r"65 entries; at most 64")


def test_tokenizer_field_is_required_and_checked():
    b = body()
    del b["tokenizer"]
    rejects(b, r"missing field\(s\) tokenizer")
    rejects(script_body({}, tokenizer="SP 1024"), r"tokenizer: 'SP 1024' is not a tokenizer name")
    rejects(script_body({}, tokenizer=""), r"tokenizer: '' is not a tokenizer name")

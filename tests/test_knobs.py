"""The knob vocabulary: checked values, clear messages, and candidate ids that aggregate."""

from __future__ import annotations

import pytest

from p2pgolf.protocol import candidates, knobs
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.errors import ProtocolError


def test_every_base_config_names_every_knob_and_is_consistent():
    for name, config in knobs.BASE_CONFIGS.items():
        assert set(config) == set(knobs.KNOBS), name
        knobs.check_config(config)


def test_naive_baseline_is_the_challenge_baseline():
    c = knobs.BASE_CONFIGS["naive-baseline"]
    assert (c["num_layers"], c["model_dim"], c["num_heads"], c["num_kv_heads"]) == (9, 512, 8, 4)
    assert (c["mlp_mult"], c["vocab_size"], c["train_seq_len"], c["tie_embeddings"]) == (2.0, 1024, 1024, True)


def test_command_line_values_parse_to_the_knob_type_or_name_the_rule():
    assert knobs.knob("num_layers").parse("12") == 12
    assert knobs.knob("matrix_lr").parse("3e-2") == 0.03
    assert knobs.knob("tie_embeddings").parse("false") is False
    with pytest.raises(ProtocolError, match=r"knob num_layers: expected an integer, got '1.5'"):
        knobs.knob("num_layers").parse("1.5")
    with pytest.raises(ProtocolError, match=r"knob matrix_lr: 5.0 is outside the allowed range \[1e-05, 1\]"):
        knobs.knob("matrix_lr").parse("5")
    with pytest.raises(ProtocolError, match=r"knob compressor: 'zstd' is not one of zlib, lzma"):
        knobs.knob("compressor").parse("zstd")


def test_candidate_id_ignores_order_types_and_entries_equal_to_the_base():
    a = candidates.candidate_id("cpu-small", {"matrix_lr": 0.03, "activation": "swiglu"}, "sp1024")
    b = candidates.candidate_id("cpu-small", {"activation": "swiglu", "matrix_lr": 0.03, "num_layers": 4}, "sp1024")
    c = candidates.candidate_id("cpu-small", {"activation": "swiglu", "mlp_mult": 2, "matrix_lr": 0.03}, "sp1024")  # int 2 == 2.0, the base
    assert a == b == c
    assert a != candidates.candidate_id("cpu-small", {"activation": "swiglu"}, "sp1024")
    assert a != candidates.candidate_id("naive-baseline", {"matrix_lr": 0.03, "activation": "swiglu"}, "sp1024")
    assert a != candidates.candidate_id("cpu-small", {"matrix_lr": 0.03, "activation": "swiglu"}, "sp4096")  # the tokenizer is part of it


def test_resolve_applies_the_diff_and_checks_cross_knob_rules():
    config = knobs.resolve("cpu-small", {"unique_blocks": 2, "recurrence": "mirror"})
    assert config["unique_blocks"] == 2 and config["num_layers"] == 4
    with pytest.raises(ProtocolError, match="unique_blocks=8 cannot exceed num_layers=4"):
        knobs.resolve("cpu-small", {"unique_blocks": 8})
    with pytest.raises(ProtocolError, match="num_heads=4 must be divisible by num_kv_heads=3"):
        knobs.resolve("cpu-small", {"num_kv_heads": 3})


def test_a_config_too_large_to_allocate_is_refused():
    with pytest.raises(ProtocolError, match="parameters; the limit is"):
        knobs.resolve("naive-baseline", {"num_layers": 64, "model_dim": 4096, "num_heads": 32, "num_kv_heads": 32, "mlp_mult": 16.0})


def test_benchmark_budget_suffix_makes_a_different_benchmark():
    smoke = benchmark("smoke")
    short = benchmark("smoke@30s")
    assert short.budget_s == 30.0 and short.name == "smoke@30s"
    assert short.id != smoke.id and short.topic != smoke.topic
    assert benchmark("smoke@60s").id == smoke.id
    with pytest.raises(ProtocolError, match="unknown benchmark 'nope'"):
        benchmark("nope")
    with pytest.raises(ProtocolError, match="bad budget"):
        benchmark("smoke@fast")


def test_negative_zero_is_one_value_with_zero():
    assert repr(knobs.knob("logit_softcap").check(-0.0)) == "0.0"
    assert candidates.candidate_id("cpu-small", {"logit_softcap": -0.0}, "sp1024") == candidates.candidate_id("cpu-small", {"logit_softcap": 0.0}, "sp1024")
    with pytest.raises(ProtocolError, match="not normalised"):
        knobs.check_normalised("cpu-small", {"logit_softcap": -0.0})

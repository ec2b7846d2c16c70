"""A run's config is checked before anything starts and survives the trip to the child process."""

from __future__ import annotations

import pytest

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.trainer.config import RunConfig, make_run_config


def test_config_round_trips_through_json_exactly():
    run = make_run_config(
        "smoke@20s", "smoke-tiny", {"model_dim": 96, "num_heads": 3}, seed=42, backend="torch",
        device="cpu", eval_token_cap=1000, compile="on", data_dir="/tmp/somewhere",
    )  # fmt: skip
    again = RunConfig.from_json(run.to_json())
    assert again == run
    assert run.budget_s == 20.0 and run.bench.budget_s == 20.0
    assert run.diff == {"model_dim": 96, "num_heads": 3}
    assert run.knobs["model_dim"] == 96 and run.knobs["num_layers"] == 2


def test_budget_flag_makes_another_benchmark_id_than_the_default_budget():
    default = make_run_config("smoke", "smoke-tiny", {})
    shorter = make_run_config("smoke", "smoke-tiny", {}, budget_s=30)
    assert default.budget_s == 60.0
    assert shorter.bench.id != default.bench.id and shorter.bench.name == "smoke@30s"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"seed": -1}, "seed -1 must be an integer"),
        ({"seed": 2**32}, "must be an integer in [0, 4294967295]"),
        ({"budget_s": 0}, "budget 0 must be a number of seconds"),
        ({"budget_s": 10**6}, "(0, 86400]"),
        ({"backend": "jax"}, "backend 'jax' is not one of"),
        ({"device": "tpu"}, "device 'tpu' is not one of"),
        ({"compile": "maybe"}, "compile mode 'maybe' is not one of auto, on, off"),
        ({"eval_token_cap": -5}, "eval token cap -5"),
    ],
)
def test_bad_run_settings_are_refused_naming_the_setting(kwargs, message):
    with pytest.raises(ProtocolError) as info:
        make_run_config("smoke", "smoke-tiny", {}, **kwargs)
    assert message in str(info.value)


def test_unknown_benchmark_and_custom_benchmark_without_data_are_refused():
    with pytest.raises(ProtocolError, match="unknown benchmark 'nope'"):
        make_run_config("nope", "smoke-tiny", {})
    with pytest.raises(ProtocolError, match="needs --data-dir"):
        make_run_config("custom", "cpu-small", {})


def test_custom_benchmark_comes_from_a_built_dataset(tmp_path):
    from trainer_helpers import build_fineweb

    data = build_fineweb(tmp_path / "data")
    run = make_run_config("custom", "cpu-small", {}, budget_s=30, data_dir=tmp_path / "data")
    assert run.bench.task == "custom-text" and run.bench.id == data.bench.with_budget(30).id

"""A config that cannot run here is refused before any process starts, naming the knob
(trainer/run_plan.py): fixed micro-batching too big for memory, sequence and evaluation
lengths too long, evaluation windows that re-read each token too often, more parameters than
the benchmark's size cap could hold. On main each of these started a run (and failed after
training, or ran for ever)."""

from __future__ import annotations

import pytest

from p2pgolf.protocol.knobs import resolve
from p2pgolf.trainer.api import prepare_run, run_experiment
from p2pgolf.trainer.config import make_run_config
from p2pgolf.trainer.memory import GIB, MemoryBudgetError
from p2pgolf.trainer.plan_refused import EVAL_WORK, MEMORY, PARAMETERS, PlanRefused
from p2pgolf.trainer.run_plan import MAX_EVAL_OVERLAP, DeviceBudget, check_config_cost, check_memory

GPU_80 = DeviceBudget(80 * GIB, activation_bytes=2, attention_scores=False, eval_batch_tokens=131072)
MAC_16 = DeviceBudget(16 * GIB, activation_bytes=2, attention_scores=True, eval_batch_tokens=65536)


def refused(call, *args, **kwargs) -> PlanRefused:
    with pytest.raises(PlanRefused) as info:
        call(*args, **kwargs)
    return info.value


def test_fixed_single_micro_batch_of_2_24_tokens_is_refused_before_any_process_starts(tmp_path):
    diff = {"grad_accum_steps": 1, "train_batch_tokens": 1 << 24}
    exc = refused(run_experiment, "smoke", "cpu-small", diff, out_dir=tmp_path / "run", backend="torch", device="cpu")
    assert (exc.reason, exc.knob) == (MEMORY, "grad_accum_steps") and "knob grad_accum_steps" in str(exc)
    assert "grad_accum_steps=1" in str(exc) and "0 chooses from memory" in str(exc)
    assert not (tmp_path / "run").exists()  # nothing was started


def test_fixed_micro_batching_names_a_count_that_fits_and_the_same_config_passes_with_it():
    config = resolve("naive-baseline", {"grad_accum_steps": 1, "train_batch_tokens": 1 << 24})
    exc = refused(check_memory, config, GPU_80)
    fits = int(str(exc).split("grad_accum_steps=")[2].split()[0])
    assert fits > 1 and check_memory(resolve("naive-baseline", {"grad_accum_steps": fits, "train_batch_tokens": 1 << 24}), GPU_80)
    assert check_memory(resolve("naive-baseline", {}), GPU_80).startswith("fits")


def test_training_and_evaluation_lengths_that_cannot_fit_name_their_knob():
    long_train = resolve("naive-baseline", {"train_seq_len": 65536, "train_batch_tokens": 1 << 20})
    assert refused(check_memory, long_train, MAC_16).knob == "train_seq_len"
    long_eval = resolve("naive-baseline", {"eval_seq_len": 65536, "vocab_size": 65536})
    exc = refused(check_memory, long_eval, MAC_16)
    assert (exc.reason, exc.knob) == (MEMORY, "eval_seq_len") and "eval_seq_len=65536" in str(exc)
    assert refused(check_memory, resolve("naive-baseline", {"vocab_size": 65536}), MAC_16).knob == "vocab_size"
    assert check_memory(resolve("naive-baseline", {"eval_seq_len": 65536}), MAC_16)  # fused attention: fits
    assert check_memory(resolve("naive-baseline", {"vocab_size": 8192}), GPU_80)  # the largest challenge tokenizer


def test_eval_stride_of_one_is_refused_and_the_floor_is_accepted():
    exc = refused(make_run_config, "smoke", "naive-baseline", {"eval_stride": 1})
    assert (exc.reason, exc.knob) == (EVAL_WORK, "eval_stride") and "eval_stride >= 16" in str(exc)
    make_run_config("smoke", "naive-baseline", {"eval_stride": 1024 // MAX_EVAL_OVERLAP})
    make_run_config("smoke", "naive-baseline", {"eval_seq_len": 2048, "eval_stride": 64})  # the challenge's usual setting
    refused(make_run_config, "smoke", "naive-baseline", {"eval_seq_len": 4096, "eval_stride": 32})
    # short windows at a tiny stride: little overlap, but one window per validation token
    exc = refused(make_run_config, "smoke", "smoke-tiny", {"eval_seq_len": 16, "eval_stride": 1})
    assert exc.knob == "eval_stride" and "at least 16" in str(exc)
    make_run_config("smoke", "smoke-tiny", {"eval_seq_len": 64, "eval_stride": 16})


def test_the_parameter_cap_follows_the_benchmarks_size_cap():
    big = {"model_dim": 4096, "num_heads": 32, "num_kv_heads": 32}  # ~541 M parameters: under the old fixed 10^9
    exc = refused(make_run_config, "smoke", "cpu-small", big)
    assert (exc.reason, exc.knob) == (PARAMETERS, "model_dim") and "16,000,000-byte" in str(exc)
    config = resolve("naive-baseline", {})
    check_config_cost(config, 16_000_000)  # the challenge baseline fits its own cap
    assert refused(check_config_cost, config, 1_000_000, {"num_layers": 9}).knob == "num_layers"
    check_config_cost(resolve("naive-baseline", {"quant_bits": 2}), 4_000_000)  # fewer bits: more parameters fit


def test_a_memory_refusal_from_the_automatic_choice_is_the_same_named_error():
    assert issubclass(MemoryBudgetError, PlanRefused)
    assert MemoryBudgetError("x").reason == MEMORY


def test_prepare_run_passes_the_built_in_bases_on_this_machine():
    for base in ("smoke-tiny", "cpu-small"):
        prepare_run("smoke", base, {}, backend="torch", device="cpu")

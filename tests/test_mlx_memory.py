"""Memory-aware micro-batching (trainer/memory.py): the choice for given memory sizes, the knob
override, and the estimate checked against what MLX really allocates."""

from __future__ import annotations

import pytest

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.knobs import resolve
from p2pgolf.trainer.memory import (
    DEFAULT_MEMORY_FRACTION,
    MemoryBudgetError,
    choose_grad_accum,
    estimate_training_memory,
    sequences_per_step,
)
from p2pgolf.trainer.train_common import plan_batch

GIB = 1 << 30


def test_16gb_mac_naive_baseline_accumulates_just_enough_to_fit():
    config = resolve("naive-baseline", {})
    memory = 16 * GIB
    choice = choose_grad_accum(config, memory)
    seqs = sequences_per_step(config)  # 524288 / 1024 = 512 sequences per step
    assert seqs == 512
    assert choice.automatic
    assert choice.grad_accum_steps > 1
    assert choice.grad_accum_steps * choice.micro_batch_sequences == seqs
    estimate = estimate_training_memory(config)
    budget = DEFAULT_MEMORY_FRACTION * memory
    assert choice.estimated_bytes == estimate.total_bytes(choice.micro_batch_sequences) <= budget
    # The fewest micro-batches that fit: the next larger micro-batch (half as many steps) does not.
    assert estimate.total_bytes(2 * choice.micro_batch_sequences) > budget


def test_more_memory_never_means_more_micro_batches():
    config = resolve("naive-baseline", {})
    counts = [choose_grad_accum(config, gib * GIB).grad_accum_steps for gib in (8, 16, 24, 36, 64, 128, 192)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1]


def test_bf16_activations_without_attention_matrices_need_fewer_micro_batches():
    config = resolve("naive-baseline", {})
    fp32 = choose_grad_accum(config, 16 * GIB)
    lean = choose_grad_accum(config, 16 * GIB, activation_bytes=2, attention_scores=False)
    assert lean.grad_accum_steps < fp32.grad_accum_steps


def test_small_config_on_a_big_machine_takes_the_whole_batch_at_once():
    config = resolve("cpu-small", {})
    choice = choose_grad_accum(config, 16 * GIB)
    assert (choice.grad_accum_steps, choice.micro_batch_sequences) == (1, sequences_per_step(config))


def test_grad_accum_knob_overrides_the_memory_choice():
    config = resolve("naive-baseline", {"grad_accum_steps": 8})
    choice = choose_grad_accum(config, 16 * GIB)
    assert not choice.automatic
    assert (choice.grad_accum_steps, choice.micro_batch_sequences) == (8, 64)
    plan = plan_batch(config, memory_bytes=16 * GIB)
    assert (plan.grad_accum_steps, plan.seqs_per_micro, plan.step_tokens(1)) == (8, 64, 524288)


def test_grad_accum_knob_that_does_not_divide_the_batch_is_refused_naming_the_knob():
    config = resolve("naive-baseline", {"grad_accum_steps": 3})
    with pytest.raises(ProtocolError, match="grad_accum_steps=3 must divide the 512 sequences"):
        choose_grad_accum(config, 16 * GIB)


def test_config_that_cannot_fit_even_one_sequence_says_how_much_it_needs():
    config = resolve("naive-baseline", {"model_dim": 2048, "num_heads": 16, "num_kv_heads": 16, "train_seq_len": 4096})
    with pytest.raises(MemoryBudgetError, match=r"needs about [\d.]+ GiB even with one sequence.*of 2\.0 GiB"):
        choose_grad_accum(config, 2 * GIB)


def test_devices_split_the_sequences_before_micro_batching():
    config = resolve("naive-baseline", {})
    assert sequences_per_step(config, world=8) == 64
    choice = choose_grad_accum(config, 80 * GIB, world=8)
    assert choice.micro_batch_sequences * choice.grad_accum_steps == 64


@pytest.mark.parametrize(
    "diff",
    [
        {"model_dim": 64, "train_seq_len": 64, "train_batch_tokens": 1024},
        {"model_dim": 64, "num_heads": 4, "activation": "swiglu", "train_seq_len": 128, "train_batch_tokens": 2048},
    ],
)
def test_estimate_is_an_upper_bound_of_what_mlx_allocates(diff):
    mx = pytest.importorskip("mlx.core")
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.trainer.datasets import load_benchmark_data
    from p2pgolf.trainer.train_mlx import train

    config = resolve("smoke-tiny", diff)
    data = load_benchmark_data(benchmark("smoke"), None)
    mx.clear_cache()
    result = train(config, data.train_stream, budget_s=600, seed=0, device="cpu", max_steps=1)
    measured = result.extra["peak_memory_mib"] * (1 << 20)
    estimated = estimate_training_memory(config).total_bytes(sequences_per_step(config))
    assert measured <= estimated
    assert estimated < 2.5 * measured + (16 << 20)  # an upper bound, not a wild one

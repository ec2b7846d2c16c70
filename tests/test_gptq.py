"""GPTQ (`gptq=true`): error feedback through the inputs' Hessian rounds a matrix so the layer's
output moves less than round-to-nearest does; the calibration Gram matrices come from the trained
model on training text, the same in torch and MLX; the artifact format is unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgolf.protocol import knobs
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.trainer.artifact import export_artifact, export_options, load_artifact
from p2pgolf.trainer.calibration import calibration_batches
from p2pgolf.trainer.datasets import load_benchmark_data
from p2pgolf.trainer.row_quantiser import gptq_codes, quantise_codes

TINY = {"num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "train_seq_len": 32, "train_batch_tokens": 256}


def _dequantised(codes, scales, shape, bits):
    qmax = 2 ** (bits - 1) - 1
    return (codes.reshape(shape).astype(np.float64) - qmax) * scales.astype(np.float64)[:, None]


@pytest.mark.parametrize("rule", ["fp16_min", "reference"])
def test_gptq_moves_the_layers_output_less_than_rounding_to_nearest(rule):
    rng = np.random.default_rng(0)
    w = (rng.standard_t(4, size=(64, 128)) * (0.02 if rule == "fp16_min" else 0.5)).astype(np.float32)
    mixing = rng.normal(size=(128, 128)) / np.sqrt(128)
    x = rng.normal(size=(2048, 128)) @ mixing * np.linspace(0.2, 3.0, 128)  # correlated, uneven inputs
    gram = x.T @ x
    for bits in (4, 6):
        plain = _dequantised(*quantise_codes(w, bits, rule=rule), w.shape, bits)
        codes, scales = gptq_codes(w, bits, gram, rule=rule)
        assert int(codes.max()) <= 2 * (2 ** (bits - 1) - 1)
        ours = _dequantised(codes, scales, w.shape, bits)
        assert np.mean((x @ (w - ours).T) ** 2) < 0.6 * np.mean((x @ (w - plain).T) ** 2)
    with pytest.raises(ValueError, match="does not fit a matrix with 128 columns"):
        gptq_codes(w, 6, gram[:10, :10])


@pytest.mark.parametrize("rule", ["fp16_min", "reference"])
@pytest.mark.parametrize("clip", ["quantile", "search", "sdclip"])
def test_with_a_diagonal_hessian_gptq_rounds_as_the_plain_rule_does(rule, clip):
    # nothing to feed forward: GPTQ must use exactly the clip and scale rules' rows and rounding
    rng = np.random.default_rng(1)
    w = (rng.standard_t(3, size=(32, 64)) * (0.02 if rule == "fp16_min" else 0.5)).astype(np.float32)
    w[:4] *= 0.01  # rows under the reference's 1/qmax floor, where its clip-then-round matters
    for bits in (4, 6):
        plain = quantise_codes(w, bits, rule=rule, clip=clip, clip_sigmas=3.0)
        ours = gptq_codes(w, bits, np.diag(rng.uniform(0.5, 2.0, 64)), rule=rule, clip=clip, clip_sigmas=3.0)
        assert np.array_equal(ours[0], plain[0]) and np.array_equal(ours[1], plain[1])


@pytest.fixture(scope="module")
def trained():
    from p2pgolf.trainer import train_torch

    config = knobs.resolve("smoke-tiny", {**TINY, "gptq": True, "quant_bits": 4, "gptq_calib_tokens": 1024})
    data = load_benchmark_data(benchmark("smoke"), None)
    result = train_torch.train(config, data.train_stream, budget_s=1000.0, seed=0, device="cpu", max_steps=5, compile_model=False)
    return config, data, result.state


def test_calibration_reads_training_tokens_and_export_uses_the_grams(trained):
    from p2pgolf.trainer.run_torch import grams_of

    config, data, state = trained
    batches = calibration_batches(config, data.train_stream)
    assert sum(b.size for b in batches) == 1024 and np.array_equal(batches[0].ravel()[:32], data.train_stream().take(32))
    grams = grams_of(state, config, batches, "cpu")
    assert set(grams) == {k for k in state if k.startswith("blocks.") and k.endswith(".weight") and state[k].ndim == 2}
    with_gptq = export_artifact(state, config, **export_options(config), hessians=grams)
    without = export_artifact(state, config, **export_options(config))
    assert with_gptq != without
    assert sorted(load_artifact(with_gptq).state) == sorted(state)


def test_mlx_collects_the_grams_torch_collects(trained):
    pytest.importorskip("mlx.core")
    from p2pgolf.trainer.run_mlx import grams_of as mlx_grams
    from p2pgolf.trainer.run_torch import grams_of

    config, data, state = trained
    batches = calibration_batches(config, data.train_stream)
    ours, theirs = grams_of(state, config, batches, "cpu"), mlx_grams(state, config, batches)
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        np.testing.assert_allclose(theirs[name], ours[name], rtol=1e-4, atol=1e-3, err_msg=name)

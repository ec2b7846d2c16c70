"""Artifacts move between backends: a model trained with MLX, written as an artifact, scores the same
val_bpb when torch loads and evaluates it, and the other way round. This is how a GPU node checks
a Mac's claim. Tolerance: val_bpb and val_loss agree within 1e-4 when both evaluate in float32
(about 1e-6 in practice), within 0.01 when both evaluate in bfloat16 (about 2e-3 in practice).
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")

from p2pgolf.protocol.benchmarks import benchmark  # noqa: E402
from p2pgolf.protocol.knobs import resolve  # noqa: E402
from p2pgolf.trainer import evaluate_mlx, evaluate_torch, model_mlx, model_torch, train_mlx, train_torch  # noqa: E402
from p2pgolf.trainer.artifact import export_artifact, load_artifact  # noqa: E402
from p2pgolf.trainer.datasets import load_benchmark_data  # noqa: E402

CONFIG = {"model_dim": 32, "num_heads": 2, "train_seq_len": 64, "train_batch_tokens": 1024}
EVAL_TOKENS = 3000


@pytest.fixture(scope="module")
def smoke():
    return load_benchmark_data(benchmark("smoke"), None)


def _both_scores(blob: bytes, smoke, **eval_kw) -> tuple:
    loaded = load_artifact(blob)
    config = loaded.config
    seq_len = config["eval_seq_len"] or config["train_seq_len"]
    kw = dict(seq_len=seq_len, stride=config["eval_stride"], token_cap=EVAL_TOKENS, **eval_kw)
    on_mlx = evaluate_mlx.evaluate(train_mlx.model_from_state(config, loaded.state), smoke.val_tokens, smoke.byte_tables, **kw)
    reference = model_torch.build_model(config)
    train_torch.load_numpy_state(reference, loaded.state)
    on_torch = evaluate_torch.evaluate(reference, smoke.val_tokens, smoke.byte_tables, **kw)
    return on_mlx, on_torch


def _assert_same_score(on_mlx, on_torch) -> None:
    assert (on_mlx.tokens, on_mlx.bytes, on_mlx.partial) == (on_torch.tokens, on_torch.bytes, on_torch.partial)
    assert on_mlx.tokens == EVAL_TOKENS
    assert abs(on_mlx.val_bpb - on_torch.val_bpb) < 1e-4
    assert abs(on_mlx.val_loss - on_torch.val_loss) < 1e-4


@pytest.mark.parametrize("extra", [{}, {"eval_stride": 32, "activation": "swiglu", "quant_bits": 6, "compressor": "lzma"}])
def test_mlx_trained_artifact_scores_the_same_in_torch(smoke, extra):
    config = resolve("smoke-tiny", {**CONFIG, **extra})
    trained = train_mlx.train(config, smoke.train_stream, budget_s=3600, seed=0, device="cpu", max_steps=12)
    blob = export_artifact(trained.state, config, quant_bits=config["quant_bits"], compressor=config["compressor"])
    on_mlx, on_torch = _both_scores(blob, smoke)
    _assert_same_score(on_mlx, on_torch)
    # Training worked (far below the 8 bits/byte of a uniform guess), so the scores mean something.
    assert on_mlx.val_bpb < 5.5


def test_torch_trained_artifact_scores_the_same_in_mlx(smoke):
    config = resolve("smoke-tiny", {**CONFIG, "tie_embeddings": False, "num_layers": 3, "unique_blocks": 2, "recurrence": "mirror"})
    trained = train_torch.train(config, smoke.train_stream, budget_s=3600, seed=0, device="cpu", max_steps=12)
    blob = export_artifact(trained.state, config)
    on_mlx, on_torch = _both_scores(blob, smoke)
    _assert_same_score(on_mlx, on_torch)
    assert on_torch.val_bpb < 5.5


def test_the_same_state_exports_the_same_artifact_bytes_from_either_backend(smoke):
    config = resolve("smoke-tiny", CONFIG)
    trained = train_mlx.train(config, smoke.train_stream, budget_s=3600, seed=0, device="cpu", max_steps=2)
    reference = model_torch.build_model(config)
    train_torch.load_numpy_state(reference, trained.state)
    from_torch = train_torch.state_to_numpy(reference)
    assert {k: v.dtype for k, v in from_torch.items()} == {k: v.dtype for k, v in trained.state.items()}
    assert export_artifact(from_torch, config) == export_artifact(trained.state, config)
    assert all(np.array_equal(from_torch[k], trained.state[k]) for k in trained.state)


def test_bf16_evaluations_of_one_artifact_agree_across_backends_within_0_01(smoke):
    # What a CUDA node checking a Mac sees when both evaluate in bfloat16 (their fast paths):
    # rounding differs between the backends, so the agreement is looser than in float32.
    config = resolve("smoke-tiny", CONFIG)
    trained = train_mlx.train(config, smoke.train_stream, budget_s=3600, seed=0, device="cpu", max_steps=12)
    loaded = load_artifact(export_artifact(trained.state, config))
    kw = dict(seq_len=config["train_seq_len"], token_cap=EVAL_TOKENS)
    ours = model_mlx.build_model(loaded.config, compute_dtype=mx.bfloat16)
    model_mlx.load_state_dict_numpy(ours, loaded.state)
    on_mlx = evaluate_mlx.evaluate(ours, smoke.val_tokens, smoke.byte_tables, **kw)
    reference = model_torch.build_model(loaded.config)
    train_torch.load_numpy_state(reference, loaded.state)
    on_torch = evaluate_torch.evaluate(reference, smoke.val_tokens, smoke.byte_tables, autocast_dtype=torch.bfloat16, **kw)
    fp32 = evaluate_torch.evaluate(reference, smoke.val_tokens, smoke.byte_tables, **kw)
    assert on_mlx.val_bpb != fp32.val_bpb  # bfloat16 really ran
    assert abs(on_mlx.val_bpb - on_torch.val_bpb) < 0.01

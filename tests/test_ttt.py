"""Legal test-time training (trainer/ttt.py): a target is scored before the model learns from it,
so no score can depend on a later token; it helps on text that repeats; the evaluated model is
left as it was; MLX scores what torch scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pgolf.protocol import knobs
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.trainer import train_torch
from p2pgolf.trainer.datasets import load_benchmark_data
from p2pgolf.trainer.eval_plan import plan_windows
from p2pgolf.trainer.evaluate_torch import evaluate, score_first_nats
from p2pgolf.trainer.model_torch import build_model
from p2pgolf.trainer.ttt import TTTSettings, chunk_windows

TINY = {"num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "train_seq_len": 32, "train_batch_tokens": 256}
TTT = TTTSettings(steps=2, lr=0.05, chunk_tokens=64)


@pytest.fixture(scope="module")
def smoke():
    return load_benchmark_data(benchmark("smoke"), None)


@pytest.fixture(scope="module")
def trained(smoke):
    config = knobs.resolve("smoke-tiny", TINY)
    result = train_torch.train(config, smoke.train_stream, budget_s=1000.0, seed=0, device="cpu", max_steps=20, compile_model=False)
    model = build_model(config)
    train_torch.load_numpy_state(model, result.state)
    return config, model


def test_no_score_depends_on_a_later_token(trained, smoke):
    _, model = trained
    tokens = np.array(smoke.val_tokens[:321])
    windows = list(plan_windows(len(tokens), 32).windows)
    before = score_first_nats(model, tokens, windows, TTT)
    changed = tokens.copy()
    p = 2 * 64 + 20  # a token inside the third chunk, which the model trains on after scoring it
    changed[p] = (changed[p] + 1) % 256
    after = score_first_nats(model, changed, windows, TTT)
    # targets 0 .. p-2 predict tokens up to p-1: a model that trained on its chunk before
    # scoring it would change targets p-20 .. p-2 here
    np.testing.assert_array_equal(after[: p - 1], before[: p - 1])
    assert not np.array_equal(after[p - 1 :], before[p - 1 :])
    assert len(chunk_windows(windows, 64)) == 5


def test_without_steps_it_scores_what_the_plain_evaluation_scores(trained, smoke):
    _, model = trained
    tokens = np.array(smoke.val_tokens[:321])
    plain = evaluate(model, tokens, smoke.byte_tables, seq_len=32)
    nats = score_first_nats(model, tokens, list(plan_windows(len(tokens), 32).windows), TTTSettings(0, 0.1, 64))
    assert float(nats.sum()) == pytest.approx(plain.val_loss * plain.tokens, rel=1e-9)


def test_it_learns_repeated_text_and_leaves_the_evaluated_model_unchanged(trained, smoke):
    _, model = trained
    motif = np.array(smoke.val_tokens[:64])
    tokens = np.concatenate([motif] * 8 + [motif[:1]])  # the same 64 tokens eight times
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    plain = evaluate(model, tokens, smoke.byte_tables, seq_len=32)
    adapted = evaluate(model, tokens, smoke.byte_tables, seq_len=32, ttt=TTTSettings(steps=4, lr=0.05, chunk_tokens=64))
    assert adapted.val_loss < plain.val_loss - 0.1
    assert adapted.tokens == plain.tokens and adapted.bytes == plain.bytes
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_mlx_scores_what_torch_scores_under_test_time_training(trained, smoke):
    pytest.importorskip("mlx.core")
    from p2pgolf.trainer import evaluate_mlx
    from p2pgolf.trainer.train_mlx import model_from_state

    config, model = trained
    tokens = np.array(smoke.val_tokens[:321])
    ours = evaluate(model, tokens, smoke.byte_tables, seq_len=32, ttt=TTT)
    theirs = evaluate_mlx.evaluate(model_from_state(config, train_torch.state_to_numpy(model)), tokens, smoke.byte_tables, seq_len=32, ttt=TTT)
    assert theirs.val_loss == pytest.approx(ours.val_loss, abs=1e-4)
    assert ours.val_loss != pytest.approx(evaluate(model, tokens, smoke.byte_tables, seq_len=32).val_loss, abs=1e-4)


def test_the_ttt_knobs_resolve_to_settings_only_when_steps_are_set():
    assert TTTSettings.from_config(knobs.resolve("smoke-tiny", {})) is None
    assert TTTSettings.from_config(knobs.resolve("smoke-tiny", {"ttt_steps": 3, "ttt_lr": 0.01, "ttt_chunk_tokens": 4096})) == TTTSettings(3, 0.01, 4096)

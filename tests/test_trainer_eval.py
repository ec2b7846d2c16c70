"""Evaluation: the windows score every target once, and val_bpb is the challenge's number."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from p2pgolf.trainer.eval_plan import plan_windows
from p2pgolf.trainer.evaluate_torch import evaluate
from p2pgolf.trainer.model_torch import build_model
from p2pgolf.trainer.train_torch import train

from trainer_helpers import build_fineweb, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = build_fineweb(tmp_path_factory.mktemp("fineweb") / "data")
    config = tiny_config()
    result = train(config, data.train_stream, budget_s=60.0, seed=3, max_steps=15)
    model = build_model(config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in result.state.items()})
    return data, config, model


def _scored_targets(plan) -> list[int]:
    out = []
    for w in plan.windows:
        assert w.length <= 64 and 0 <= w.score_from < w.length
        out.extend(range(w.start + w.score_from, w.start + w.length))
    return out


@pytest.mark.parametrize("n_tokens,stride,cap", [(1000, 0, 0), (1000, 16, 0), (1001, 64, 0), (130, 48, 0), (1000, 16, 300), (1000, 0, 300), (65, 8, 0)])
def test_every_scored_target_is_scored_exactly_once(n_tokens, stride, cap):
    plan = plan_windows(n_tokens, 64, stride, cap)
    targets = _scored_targets(plan)
    assert targets == list(range(plan.scored_targets))
    sliding = 0 < stride < 64
    available = n_tokens - 1 if sliding else (n_tokens - 1) // 64 * 64
    assert plan.available_targets == available
    assert plan.scored_targets == (min(cap, available) if cap else available)
    assert plan.partial == (plan.scored_targets < available)


def test_sliding_windows_give_each_target_after_the_first_window_at_least_seq_len_minus_stride_context():
    plan = plan_windows(2000, 64, 16)
    for w in plan.windows[1:]:
        assert w.score_from >= 64 - 16
        assert w.length == 64


def test_too_short_a_split_is_refused_with_the_lengths():
    with pytest.raises(ValueError, match="too short"):
        plan_windows(10, 64, 0)


def test_non_overlapping_val_bpb_equals_the_challenge_computation(trained):
    data, config, model = trained
    tokens = data.val_tokens
    seq = config["train_seq_len"]
    got = evaluate(model, tokens, data.byte_tables, seq_len=seq, stride=0, batch_tokens=4096)
    # The challenge: truncate to whole sequences, mean cross-entropy, bytes from the tables.
    usable = (len(tokens) - 1) // seq * seq
    x = torch.from_numpy(tokens[:usable].astype(np.int64)).view(-1, seq)
    y = torch.from_numpy(tokens[1 : usable + 1].astype(np.int64)).view(-1, seq)
    with torch.no_grad():
        mean_loss = float(model(x, y))
    prev, tgt = tokens[:usable].astype(np.int64), tokens[1 : usable + 1].astype(np.int64)
    n_bytes = int((data.byte_tables.base_bytes[tgt] + (data.byte_tables.has_leading_space[tgt] & ~data.byte_tables.is_boundary[prev])).sum())
    expected_bpb = mean_loss / math.log(2) * usable / n_bytes
    assert got.tokens == usable and got.bytes == n_bytes and not got.partial
    assert got.val_loss == pytest.approx(mean_loss, rel=1e-5)
    assert got.val_bpb == pytest.approx(expected_bpb, rel=1e-5)


def test_sliding_window_scores_all_targets_and_context_lowers_the_loss(trained):
    data, config, model = trained
    cap = 62 * 64  # the same targets for both (a whole number of flat windows)
    flat = evaluate(model, data.val_tokens, data.byte_tables, seq_len=64, stride=0, token_cap=cap)
    sliding = evaluate(model, data.val_tokens, data.byte_tables, seq_len=64, stride=16, token_cap=cap)
    assert sliding.tokens == flat.tokens == cap
    assert sliding.bytes == flat.bytes == data.byte_tables.sequence_bytes(data.val_tokens[: cap + 1])
    assert sliding.val_loss < flat.val_loss


def test_a_token_cap_scores_a_prefix_and_marks_the_result_partial(trained):
    data, config, model = trained
    capped = evaluate(model, data.val_tokens, data.byte_tables, seq_len=64, stride=0, token_cap=640)
    assert capped.partial and capped.tokens == 640
    assert capped.bytes == data.byte_tables.sequence_bytes(data.val_tokens[:641])


def test_bf16_autocast_evaluation_the_cuda_path_agrees_with_float32(trained):
    data, config, model = trained
    kw = dict(seq_len=64, token_cap=2048)
    fp32 = evaluate(model, data.val_tokens, data.byte_tables, **kw)
    bf16 = evaluate(model, data.val_tokens, data.byte_tables, autocast_dtype=torch.bfloat16, **kw)
    assert model.stream_dtype is None  # restored after evaluation
    assert bf16.val_bpb != fp32.val_bpb
    assert bf16.val_bpb == pytest.approx(fp32.val_bpb, abs=0.03)

"""val_loss and val_bpb of an MLX model on the validation tokens, as the challenge computes them.

What it guarantees: the torch backend's evaluation (trainer/evaluate_torch.py) with MLX tensor
work: the same windows (`trainer.eval_plan`), every scored target counted once, bytes from the
byte tables (`trainer.byte_accounting`), per-target nats summed in float64 (on the host: MLX
has no float64 on the GPU), val_bpb = nats / ln 2 / bytes. Returns the shared `EvalResult`.
With `ttt`, score-first test-time training as the torch backend runs it (`score_first_nats`);
the model's weights are restored afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import mlx.core as mx
import numpy as np

from p2pgolf.trainer.eval_plan import EvalResult, Window, plan_windows
from p2pgolf.trainer.ttt import TTTSettings, chunk_batches, chunk_windows

__all__ = ["EvalResult", "evaluate", "score_first_nats"]


def evaluate(
    model,
    val_tokens: np.ndarray,
    byte_tables,
    *,
    seq_len: int,
    stride: int = 0,
    token_cap: int = 0,
    batch_tokens: int = 32768,
    progress: Callable[[int, int], None] | None = None,
    ttt: TTTSettings | None = None,
) -> EvalResult:
    """Evaluate `model` (an MLX module with `per_token_loss(x, y)`) on `val_tokens` (uint16 ids)."""
    started = time.perf_counter()
    tokens = np.asarray(val_tokens)
    plan = plan_windows(len(tokens), seq_len, stride, token_cap)
    total_bytes = plan.target_bytes_total(tokens, byte_tables)
    if ttt is not None:
        nats = float(score_first_nats(model, tokens, list(plan.windows), ttt, progress=progress).sum(dtype=np.float64))
        return _result(nats, plan, total_bytes, started)
    per_batch = max(1, batch_tokens // seq_len)
    groups: dict[int, list] = {}
    for w in plan.windows:  # windows of one length run together (all but the last are full)
        groups.setdefault(w.length, []).append(w)
    nats = np.float64(0.0)
    done = 0
    for length, windows in groups.items():
        for i in range(0, len(windows), per_batch):
            batch = windows[i : i + per_batch]
            idx = np.stack([np.arange(w.start, w.start + length + 1) for w in batch])
            chunk = tokens[idx].astype(np.int32)
            loss = model.per_token_loss(mx.array(chunk[:, :-1]), mx.array(chunk[:, 1:]))
            values = np.array(loss.astype(mx.float32), dtype=np.float64)
            mask = np.arange(length)[None, :] >= np.array([w.score_from for w in batch])[:, None]
            nats += values[mask].sum(dtype=np.float64)
            done += len(batch)
            if progress is not None:
                progress(done, len(plan.windows))
    return _result(float(nats), plan, total_bytes, started)


def _result(total_nats: float, plan, total_bytes: int, started: float) -> EvalResult:
    return EvalResult(
        val_loss=total_nats / plan.scored_targets,
        val_bpb=total_nats / math.log(2.0) / total_bytes,
        tokens=plan.scored_targets,
        bytes=total_bytes,
        partial=plan.partial,
        seconds=time.perf_counter() - started,
    )


def score_first_nats(model, tokens: np.ndarray, windows: list[Window], ttt: TTTSettings, *, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """evaluate_torch.score_first_nats in MLX: per-target nats under score-first test-time
    training (chunk by chunk, score, then `ttt.steps` SGD steps on the chunk); the model's own
    weights are put back at the end."""
    import mlx.nn as nn
    from mlx.utils import tree_map

    saved = model.parameters()
    grad_of = nn.value_and_grad(model, lambda x, y: model.loss(x, y))
    out: list[np.ndarray] = []
    done = 0
    try:
        for chunk in chunk_windows(windows, ttt.chunk_tokens):
            batches = [((mx.array(ids[:, :-1].astype(np.int32)), mx.array(ids[:, 1:].astype(np.int32))), (length, group))
                       for ids, length, group in chunk_batches(tokens, chunk)]  # fmt: skip
            for (x, y), (length, group) in batches:  # score first
                loss = np.array(model.per_token_loss(x, y).astype(mx.float32), dtype=np.float64)
                out.extend(loss[row, w.score_from : length] for row, w in enumerate(group))
            count = sum(len(g) * length for _, (length, g) in batches)
            for _ in range(ttt.steps):  # then learn from what was just scored
                total = None
                for (x, y), (length, group) in batches:
                    _, grads = grad_of(x, y)
                    share = len(group) * length / count
                    grads = tree_map(lambda g: g * share, grads)
                    total = grads if total is None else tree_map(lambda a, b: a + b, total, grads)
                model.update(tree_map(lambda p, g: p - ttt.lr * g, model.parameters(), total))
                mx.eval(model.parameters())
            done += len(chunk)
            if progress is not None:
                progress(done, len(windows))
    finally:
        model.update(saved)
    return np.concatenate(out) if out else np.zeros(0)

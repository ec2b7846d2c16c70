"""val_loss and val_bpb of an MLX model on the validation tokens, as the challenge computes them.

What it guarantees: the torch backend's evaluation (trainer/evaluate_torch.py) with MLX tensor
work: the same windows (`trainer.eval_plan`), every scored target counted once, bytes from the
byte tables (`trainer.byte_accounting`), per-target nats summed in float64 (on the host: MLX
has no float64 on the GPU), val_bpb = nats / ln 2 / bytes. Returns the shared `EvalResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import mlx.core as mx
import numpy as np

from p2pgolf.trainer.eval_plan import EvalResult, plan_windows

__all__ = ["EvalResult", "evaluate"]


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
) -> EvalResult:
    """Evaluate `model` (an MLX module with `per_token_loss(x, y)`) on `val_tokens` (uint16 ids)."""
    started = time.perf_counter()
    tokens = np.asarray(val_tokens)
    plan = plan_windows(len(tokens), seq_len, stride, token_cap)
    total_bytes = plan.target_bytes_total(tokens, byte_tables)
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
    total_nats = float(nats)
    return EvalResult(
        val_loss=total_nats / plan.scored_targets,
        val_bpb=total_nats / math.log(2.0) / total_bytes,
        tokens=plan.scored_targets,
        bytes=total_bytes,
        partial=plan.partial,
        seconds=time.perf_counter() - started,
    )

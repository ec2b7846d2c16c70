"""val_loss and val_bpb of a torch model on the validation tokens, as the challenge computes them.

What it guarantees: the windows of `trainer.eval_plan` (non-overlapping as the challenge, or
sliding with a stride), every scored target counted once; nats summed in float64 on the device,
bytes from the byte tables (`trainer.byte_accounting`), val_bpb = nats / ln 2 / bytes. Under
torch.distributed the windows are split between ranks and the sums all-reduced, so every rank
returns the same numbers. The model is left in the mode it was in, and its weights unchanged.

With `ttt` (trainer/ttt.py) the evaluation is score-first test-time training on a copy of the
model: `score_first_nats` scores each chunk of windows, then trains the copy on it. Under
torch.distributed each rank takes a contiguous run of windows, in order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from p2pgolf.trainer.eval_plan import EvalResult, Window, plan_windows  # EvalResult is shared with the MLX backend
from p2pgolf.trainer.ttt import TTTSettings, chunk_batches, chunk_windows

__all__ = ["EvalResult", "evaluate", "score_first_nats"]


def evaluate(
    model: torch.nn.Module,
    val_tokens: np.ndarray,
    byte_tables,
    *,
    seq_len: int,
    stride: int = 0,
    token_cap: int = 0,
    device: torch.device | str = "cpu",
    batch_tokens: int = 32768,
    autocast_dtype: torch.dtype | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    ttt: TTTSettings | None = None,
) -> EvalResult:
    """Evaluate `model` (exposing `per_token_loss(x, y)`) on `val_tokens` (uint16 ids)."""
    started = time.perf_counter()
    device = torch.device(device)
    tokens = np.asarray(val_tokens)
    plan = plan_windows(len(tokens), seq_len, stride, token_cap)
    total_bytes = plan.target_bytes_total(tokens, byte_tables)
    if ttt is not None:
        share = -(-len(plan.windows) // world_size)
        mine = plan.windows[rank * share : (rank + 1) * share]
        per_target = score_first_nats(model, tokens, mine, ttt, device=device, autocast_dtype=autocast_dtype, progress=progress)
        nats = torch.tensor(float(per_target.sum(dtype=np.float64)), dtype=torch.float64, device=device)
        return _result(nats, plan, total_bytes, started, world_size)
    mine = plan.windows[rank::world_size]
    nats = torch.zeros((), dtype=torch.float64, device=device)
    per_batch = max(1, batch_tokens // seq_len)
    # Windows of one length run together (all but the last are full-length).
    groups: dict[int, list] = {}
    for w in mine:
        groups.setdefault(w.length, []).append(w)
    was_training = model.training
    stream_dtype = getattr(model, "stream_dtype", None)
    if autocast_dtype is not None and hasattr(model, "stream_dtype"):
        model.stream_dtype = autocast_dtype
    model.eval()
    done = 0
    try:
        with torch.inference_mode():
            for length, windows in groups.items():
                for i in range(0, len(windows), per_batch):
                    batch = windows[i : i + per_batch]
                    idx = np.stack([np.arange(w.start, w.start + length + 1) for w in batch])
                    chunk = torch.from_numpy(tokens[idx].astype(np.int64)).to(device, non_blocking=True)
                    x, y = chunk[:, :-1], chunk[:, 1:]
                    score_from = torch.tensor([w.score_from for w in batch], device=device)
                    mask = torch.arange(length, device=device)[None, :] >= score_from[:, None]
                    with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                        loss = model.per_token_loss(x, y)
                    nats += (loss.double() * mask).sum()
                    done += len(batch)
                    if progress is not None:
                        progress(done, len(mine))
    finally:
        model.train(was_training)
        if hasattr(model, "stream_dtype"):
            model.stream_dtype = stream_dtype
    return _result(nats, plan, total_bytes, started, world_size)


def _result(nats: torch.Tensor, plan, total_bytes: int, started: float, world_size: int) -> EvalResult:
    dist = torch.distributed
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(nats, op=dist.ReduceOp.SUM)
    total_nats = float(nats.item())
    return EvalResult(
        val_loss=total_nats / plan.scored_targets,
        val_bpb=total_nats / math.log(2.0) / total_bytes,
        tokens=plan.scored_targets,
        bytes=total_bytes,
        partial=plan.partial,
        seconds=time.perf_counter() - started,
    )


def score_first_nats(
    model: torch.nn.Module,
    tokens: np.ndarray,
    windows: list[Window],
    ttt: TTTSettings,
    *,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Nats of every target the windows score, in window order, under score-first test-time
    training of a copy of `model`: chunk by chunk, score, then `ttt.steps` SGD steps on the
    chunk. The score of a target never depends on any token after its chunk."""
    import copy

    device = torch.device(device)
    learner = copy.deepcopy(model)
    if autocast_dtype is not None and hasattr(learner, "stream_dtype"):
        learner.stream_dtype = autocast_dtype
    params = [p for p in learner.parameters() if p.requires_grad]
    out: list[np.ndarray] = []
    done = 0
    autocast = dict(device_type=device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None)
    for chunk in chunk_windows(windows, ttt.chunk_tokens):
        batches = [((data[:, :-1], data[:, 1:]), (length, group)) for data, length, group in
                   ((torch.from_numpy(ids).to(device), length, group) for ids, length, group in chunk_batches(tokens, chunk))]  # fmt: skip
        with torch.no_grad(), torch.autocast(**autocast):  # score first (no_grad: the rope tables it caches are reused in training)
            for (x, y), (length, group) in batches:
                loss = learner.per_token_loss(x, y).double()
                for row, w in enumerate(group):
                    out.append(loss[row, w.score_from : length].cpu().numpy())
        for _ in range(ttt.steps):  # then learn from what was just scored
            for p in params:
                p.grad = None
            count = sum(len(g) * length for _, (length, g) in batches)
            for (x, y), (length, group) in batches:
                with torch.autocast(**autocast):
                    loss = learner(x, y) * (len(group) * length / count)
                loss.backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-ttt.lr)
        done += len(chunk)
        if progress is not None:
            progress(done, len(windows))
    return np.concatenate(out) if out else np.zeros(0)

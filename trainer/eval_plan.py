"""Which windows of the validation tokens an evaluation runs, and which targets each scores.

Backend-free (numpy only): torch and MLX evaluate the same windows and count the same bytes.

What it guarantees: every scored target (token i+1 predicted from tokens 0..i) is scored exactly
once, in a window of at most `seq_len` inputs.
- stride 0 (or stride >= seq_len): non-overlapping windows of `seq_len`, the tail that does not
  fill a window dropped, exactly as the challenge's evaluation does.
- 0 < stride < seq_len: sliding windows; the first scores its `seq_len` targets, each next one
  moves `stride` tokens and scores only its last `stride` targets, so all but the first
  `seq_len` targets see `seq_len - stride` or more tokens of context. No target is dropped.
- A token cap scores only the first `token_cap` targets (`partial` says whether any were left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EvalPlan", "EvalResult", "Window", "plan_windows"]


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation measured, whichever backend ran it."""

    val_loss: float  # mean nats per scored target
    val_bpb: float
    tokens: int  # scored targets
    bytes: int
    partial: bool
    seconds: float


@dataclass(frozen=True, slots=True)  # slots: a plan may hold millions of them
class Window:
    """Inputs tokens[start : start+length], targets tokens[start+1 : start+1+length]; targets
    at positions [score_from, length) are scored."""

    start: int
    length: int
    score_from: int


@dataclass(frozen=True)
class EvalPlan:
    windows: tuple[Window, ...]
    scored_targets: int  # targets 0 .. scored_targets-1 are scored
    available_targets: int  # what the split offers under this windowing with no cap
    partial: bool

    def target_bytes_total(self, tokens: np.ndarray, byte_tables) -> int:
        """Sum of the bytes of every scored target (byte_tables: trainer.byte_accounting.ByteTables)."""
        n = self.scored_targets
        prev = np.asarray(tokens[:n], dtype=np.int64)
        tgt = np.asarray(tokens[1 : n + 1], dtype=np.int64)
        return int(byte_tables.target_bytes(prev, tgt).sum(dtype=np.int64))


def plan_windows(n_tokens: int, seq_len: int, stride: int = 0, token_cap: int = 0) -> EvalPlan:
    """The windows over a split of `n_tokens` tokens. ValueError if nothing can be scored."""
    if seq_len < 1:
        raise ValueError(f"evaluation sequence length must be positive, got {seq_len}")
    if stride < 0 or token_cap < 0:
        raise ValueError(f"stride ({stride}) and token cap ({token_cap}) must not be negative")
    targets = n_tokens - 1
    sliding = 0 < stride < seq_len
    available = targets if sliding else (targets // seq_len) * seq_len
    if available <= 0:
        raise ValueError(f"the validation split has {n_tokens} tokens: too short for windows of {seq_len}")
    scored = min(available, token_cap) if token_cap else available
    windows: list[Window] = []
    if not sliding:
        for start in range(0, scored, seq_len):
            windows.append(Window(start, min(seq_len, scored - start), 0))
    else:
        end = min(seq_len, scored)
        windows.append(Window(0, end, 0))
        while end < scored:
            new_end = min(end + stride, scored)
            start = max(0, new_end - seq_len)
            windows.append(Window(start, new_end - start, end - start))
            end = new_end
    return EvalPlan(tuple(windows), scored, available, scored < available)

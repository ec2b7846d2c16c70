"""Legal test-time training: the evaluation adapts the model to the validation text it has
already scored, never to text it has not. Backend-free; trainer/evaluate_torch.py and
trainer/evaluate_mlx.py run it.

The windows of the evaluation (`trainer.eval_plan`) are taken in order and grouped into chunks of
about `ttt_chunk_tokens` scored targets. Each chunk is scored first, with the weights as they
are; then the model takes `ttt_steps` plain SGD steps (learning rate `ttt_lr`, every weight) on
that chunk's windows, whose targets have all been scored by then. So the score of target i comes
from weights trained only on targets before i's chunk (score-first, as the challenge's rules
require of test-time training). The evaluation's time includes the training steps. The trained
copy is thrown away: the artifact is what was exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pgolf.trainer.eval_plan import Window

__all__ = ["TTTSettings", "chunk_batches", "chunk_windows"]


@dataclass(frozen=True)
class TTTSettings:
    steps: int  # SGD steps after each scored chunk; 0: no test-time training
    lr: float
    chunk_tokens: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TTTSettings | None":
        """The settings of a resolved knob config, or None when it does no test-time training."""
        if not config["ttt_steps"]:
            return None
        return cls(config["ttt_steps"], config["ttt_lr"], config["ttt_chunk_tokens"])


def chunk_windows(windows: Sequence[Window], chunk_tokens: int) -> list[list[Window]]:
    """Consecutive windows grouped so that each group's first scored target lies in one span of
    `chunk_tokens` targets (a window is never split; order is kept)."""
    chunks: list[list[Window]] = []
    current = -1
    for w in windows:
        index = (w.start + w.score_from) // chunk_tokens
        if index != current:
            chunks.append([])
            current = index
        chunks[-1].append(w)
    return chunks


def chunk_batches(tokens: np.ndarray, chunk: Sequence[Window]) -> list[tuple[np.ndarray, int, list[Window]]]:
    """A chunk's windows as batches, one per window length: (token ids [windows, length + 1],
    int64, inputs then the targets' last; the length; the windows, in order)."""
    by_length: dict[int, list[Window]] = {}
    for w in chunk:
        by_length.setdefault(w.length, []).append(w)
    out = []
    for length, group in by_length.items():
        idx = np.stack([np.arange(w.start, w.start + length + 1) for w in group])
        out.append((tokens[idx].astype(np.int64), length, group))
    return out

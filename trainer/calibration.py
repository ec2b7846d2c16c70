"""Calibration for GPTQ (`gptq=true`): the input Gram matrix (sum of x x^T) of every matrix the
export quantises with error feedback, from the trained model run on the first `gptq_calib_tokens`
tokens of the training split (already trained on: no validation text is seen). Backend-free
planning; the torch and MLX backends collect (model_torch.collect_grams, model_mlx.collect_grams).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["calibration_batches"]


def calibration_batches(config: Mapping[str, Any], train_stream, batch_seqs: int = 8) -> list[np.ndarray]:
    """(inputs) batches of `train_seq_len` tokens, int64 [seqs, seq_len], covering
    `gptq_calib_tokens` tokens from the start of the training split."""
    seq_len = config["train_seq_len"]
    seqs = max(1, config["gptq_calib_tokens"] // seq_len)
    stream = train_stream()
    out = []
    while seqs > 0:
        n = min(batch_seqs, seqs)
        out.append(np.asarray(stream.take(n * seq_len), dtype=np.int64).reshape(n, seq_len))
        seqs -= n
    return out

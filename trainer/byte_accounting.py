"""Bytes per target token for val_bpb, exactly as the Parameter Golf challenge counts them.

val_bpb = (sum of per-target cross-entropy in nats) / ln 2 / (sum of target bytes), both sums in
float64. A target token's bytes are the UTF-8 length of its piece without a leading '▁', plus one
for that '▁' unless the previous token is a boundary (control, unknown or unused) token; boundary
tokens count zero and byte-fallback pieces count one. Byte-level vocabularies (the smoke
benchmark) count one byte per token id below 256. numpy only, so every backend shares it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

LEADING_SPACE = "\u2581"


@dataclass(frozen=True, eq=False)
class ByteTables:
    """Per-token-id lookup tables; arrays are read-only and all of length `size`."""

    base_bytes: np.ndarray  # int16: UTF-8 bytes of the piece without its leading '▁'
    has_leading_space: np.ndarray  # bool: piece begins with '▁'
    is_boundary: np.ndarray  # bool: control / unknown / unused (and ids past the tokenizer's)

    def __post_init__(self) -> None:
        n = len(self.base_bytes)
        if len(self.has_leading_space) != n or len(self.is_boundary) != n:
            raise ValueError("byte tables must all have the same length")
        for arr in (self.base_bytes, self.has_leading_space, self.is_boundary):
            arr.flags.writeable = False

    @property
    def size(self) -> int:
        return len(self.base_bytes)

    @classmethod
    def from_sentencepiece(cls, model_path: str | os.PathLike, vocab_size: int | None = None) -> "ByteTables":
        """Tables for a SentencePiece model; `vocab_size` pads to a model's (larger) vocabulary."""
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(model_path))
        n = int(sp.vocab_size())
        size = max(n, vocab_size or 0)
        base = np.zeros(size, dtype=np.int16)
        space = np.zeros(size, dtype=np.bool_)
        boundary = np.ones(size, dtype=np.bool_)  # ids the tokenizer never emits count as boundaries
        for i in range(n):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith(LEADING_SPACE):
                space[i] = True
                piece = piece[len(LEADING_SPACE):]
            base[i] = len(piece.encode("utf-8"))
        return cls(base, space, boundary)

    @classmethod
    def byte_level(cls, vocab: int = 256) -> "ByteTables":
        """Tables for byte tokens: ids 0-255 are one byte each; any ids above are boundaries."""
        if vocab < 256:
            raise ValueError(f"a byte-level vocabulary needs at least 256 ids, got {vocab}")
        base = np.zeros(vocab, dtype=np.int16)
        base[:256] = 1
        boundary = np.ones(vocab, dtype=np.bool_)
        boundary[:256] = False
        return cls(base, np.zeros(vocab, dtype=np.bool_), boundary)

    def target_bytes(self, prev_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
        """Bytes each target stands for (int64, same shape as the inputs)."""
        prev = np.asarray(prev_ids)
        tgt = np.asarray(target_ids)
        if prev.shape != tgt.shape:
            raise ValueError(f"prev_ids shape {prev.shape} differs from target_ids shape {tgt.shape}")
        for name, ids in (("prev_ids", prev), ("target_ids", tgt)):
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.size):
                raise ValueError(f"{name} has ids outside [0, {self.size}) of the byte tables")
        out = self.base_bytes[tgt].astype(np.int64)
        out += self.has_leading_space[tgt] & ~self.is_boundary[prev]
        return out

    def sequence_bytes(self, tokens: np.ndarray) -> int:
        """Total bytes of every target in a token sequence (each token predicted from the one before)."""
        tokens = np.asarray(tokens)
        if tokens.size < 2:
            return 0
        return int(self.target_bytes(tokens[:-1], tokens[1:]).sum(dtype=np.int64))


def target_bytes(tables: ByteTables, prev_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """Function form of `ByteTables.target_bytes`."""
    return tables.target_bytes(prev_ids, target_ids)


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """val_bpb from summed nats and summed bytes (float64)."""
    if total_bytes <= 0:
        raise ValueError(f"cannot compute bits per byte over {total_bytes} bytes")
    return float(np.float64(total_nats) / np.float64(math.log(2)) / np.float64(total_bytes))

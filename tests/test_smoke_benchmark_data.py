"""The smoke benchmark's generated text: identical everywhere, split cleanly, learnable."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from p2pgolf.protocol.benchmarks import SMOKE_VAL_SHA256, benchmark
from p2pgolf.trainer import smoke
from p2pgolf.trainer.datasets import load_benchmark_data

REPO = Path(__file__).resolve().parents[1]


def test_validation_bytes_match_the_digest_pinned_in_the_protocol():
    assert len(smoke.val_bytes()) == smoke.VAL_BLOCKS * smoke.BLOCK_BYTES == 98304
    assert hashlib.sha256(smoke.val_bytes()).hexdigest() == SMOKE_VAL_SHA256


def test_generation_does_not_depend_on_hash_seed_or_process():
    code = "from p2pgolf.trainer import smoke; import hashlib; print(smoke.val_sha256(), hashlib.sha256(smoke.block('train', 77)).hexdigest())"
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=True)
        outs.add(out.stdout.strip())
    here = f"{smoke.val_sha256()} {hashlib.sha256(smoke.block('train', 77)).hexdigest()}"
    assert outs == {here}


def test_splitmix64_matches_its_published_reference_values():
    # First outputs of splitmix64 seeded with 1234567 (from the generator's reference C code).
    rng = smoke.SplitMix64(1234567)
    assert [rng.next() for _ in range(3)] == [6457827717110365317, 3203168211198807973, 9817491932198370423]


def test_blocks_are_ascii_text_and_train_differs_from_validation():
    val = smoke.val_bytes()
    train = smoke.train_bytes(8)
    assert len(train) == 8 * smoke.BLOCK_BYTES
    assert max(val) < 128 and max(train) < 128
    val_blocks = {smoke.block("val", i) for i in range(smoke.VAL_BLOCKS)}
    assert not val_blocks & {smoke.block("train", i) for i in range(smoke.TRAIN_BLOCKS)}
    with pytest.raises(ValueError, match="outside"):
        smoke.block("train", smoke.TRAIN_BLOCKS)
    with pytest.raises(ValueError, match="unknown smoke split"):
        smoke.block("test", 0)


def test_validation_text_is_far_more_predictable_than_uniform_bytes():
    """A trigram count model fitted on 1 MiB of training text scores the validation split well
    below 8 bits per byte: the structure is there for a small model to learn quickly."""
    train = np.frombuffer(smoke.train_bytes(32), dtype=np.uint8).astype(np.int64)
    val = np.frombuffer(smoke.val_bytes(), dtype=np.uint8).astype(np.int64)
    ctx_train = train[:-2] * 256 + train[1:-1]
    counts = np.zeros((256 * 256, 256), dtype=np.float64)
    np.add.at(counts, (ctx_train, train[2:]), 1.0)
    probs = (counts + 0.01) / (counts + 0.01).sum(axis=1, keepdims=True)
    ctx_val = val[:-2] * 256 + val[1:-1]
    bits = -np.log2(probs[ctx_val, val[2:]]).mean()
    assert bits < 2.5, bits


def test_loader_serves_smoke_data_with_byte_tables():
    data = load_benchmark_data(benchmark("smoke"), None)
    assert data.vocab_size == 256 and data.bos_id is None
    assert data.val_tokens.dtype == np.uint16 and bytes(data.val_tokens.astype(np.uint8)) == smoke.val_bytes()
    assert data.val_bytes == len(smoke.val_bytes()) - 1  # every target is one byte; the first token is context
    batch = next(data.train_batches(4, 64))
    first = np.frombuffer(smoke.block("train", 0)[: 4 * 64 + 1], dtype=np.uint8)
    assert (batch.inputs.reshape(-1) == first[:-1]).all() and (batch.targets.reshape(-1) == first[1:]).all()

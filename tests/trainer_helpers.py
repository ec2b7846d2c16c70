"""Helpers for the trainer tests: FineWeb-Edu sample shards, small configs, a few training steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from p2pgolf.protocol import knobs

# The test machine's few cores are shared: one torch thread avoids OpenMP spin-waiting, which
# makes multi-threaded CPU steps several times slower under load. Children get the same.
os.environ["OMP_NUM_THREADS"] = "1"
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the MLX-only tests do not need torch
    pass

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FINEWEB_TEXT = SHARED_DATA / "fineweb_edu_sample.txt"
TOKENIZER = SHARED_DATA / "fineweb_1024_bpe.model"

# The p2pgolf command as this interpreter runs it (no dependence on the console script's location).
P2PGOLF_CLI = (sys.executable, "-c", "from p2pgolf.node.cli import main; main()")


def p2pgolf(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `p2pgolf --home HOME ARGS...` in a fresh interpreter; output captured as text."""
    return subprocess.run([*P2PGOLF_CLI, "--home", str(home), *args], capture_output=True, text=True, timeout=timeout)


# A model small enough that a CPU step takes tens of milliseconds.
TINY = {
    "num_layers": 4,
    "model_dim": 64,
    "num_heads": 4,
    "num_kv_heads": 2,
    "train_seq_len": 64,
    "train_batch_tokens": 2048,
    "grad_accum_steps": 1,
    "muon_momentum_warmup_steps": 10,
    "warmdown_frac": 0.0,
}


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """A resolved sp1024 config (vocab 1024) of the TINY shape with `overrides`."""
    return knobs.resolve("cpu-small", {**TINY, **overrides})


def build_fineweb(out_dir: Path):
    """Challenge-format shards of the FineWeb-Edu sample (one document per line, 5% validation)
    and the BenchData over them."""
    from p2pgolf.trainer.build import build_shards_from_text
    from p2pgolf.trainer.datasets import custom_benchmark, load_benchmark_data

    build_shards_from_text([FINEWEB_TEXT], TOKENIZER, out_dir, val_fraction=0.05, doc_split="line", name="fineweb-sample")
    bench = custom_benchmark(out_dir)
    return load_benchmark_data(bench, out_dir)

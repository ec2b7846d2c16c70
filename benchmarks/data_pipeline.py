"""How fast the trainer's data side feeds a backend, against plain numpy baselines.

Measured in one run, each the best of --repeat:
- training batches: `train_batches` over memory-mapped shards (TokenStream crossing shard ends)
  against the baseline of slicing one in-memory array into the same int64 windows;
- val_bpb byte accounting: `ByteTables.target_bytes` summed over a validation-sized sequence
  against the baseline of a bare table lookup (`base_bytes[targets]`) of the same tokens;
- smoke text: generating the 4 MiB training split from its seed against reading the same bytes
  back from a file (what shipping the split pre-generated would cost).
Shards are random sp1024 tokens written to a temporary directory with the real shard writer.

    .venv/bin/python benchmarks/data_pipeline.py [--shard-tokens 20000000] [--batch 64] [--seq 1024] [--json]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pgolf.trainer import smoke  # noqa: E402
from p2pgolf.trainer.byte_accounting import ByteTables  # noqa: E402
from p2pgolf.trainer.datasets import TokenStream, _ShardChunk, train_batches  # noqa: E402
from p2pgolf.trainer.shards import write_shard  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "fineweb_1024_bpe.model"


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


@click.command()
@click.option("--shards", default=3, show_default=True, help="training shards to stream through")
@click.option("--shard-tokens", default=5_000_000, show_default=True, help="tokens per shard")
@click.option("--batch", default=32, show_default=True, help="sequences per batch")
@click.option("--seq", default=1024, show_default=True, help="tokens per sequence")
@click.option("--steps", default=400, show_default=True, help="batches per timing")
@click.option("--val-tokens", default=4_000_000, show_default=True, help="tokens in the byte-accounting sequence")
@click.option("--repeat", default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def main(shards: int, shard_tokens: int, batch: int, seq: int, steps: int, val_tokens: int, repeat: int, as_json: bool) -> None:
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(shards):
            path = Path(tmp) / f"fineweb_train_{i:06d}.bin"
            write_shard(path, rng.integers(0, 1024, shard_tokens, dtype=np.uint16))
            paths.append(path)
        chunks = [_ShardChunk(p) for p in paths]
        whole = np.concatenate([np.fromfile(p, dtype="<u2", offset=1024) for p in paths])
        step_tokens = batch * seq + 1

        def ours() -> None:
            it = train_batches(TokenStream(chunks), batch, seq)
            for _ in range(steps):
                next(it)

        def baseline() -> None:
            pos = 0
            for _ in range(steps):
                if pos + step_tokens > len(whole):
                    pos = 0
                span = whole[pos : pos + step_tokens].astype(np.int64)
                pos += step_tokens
                span[:-1].reshape(batch, seq), span[1:].reshape(batch, seq)

        t_ours, t_base = _best(ours, repeat), _best(baseline, repeat)
        n = steps * batch * seq
        rows.append(("training batches (mmap shards)", n / t_ours, n / t_base, "tokens/s"))

        smoke_file = Path(tmp) / "smoke_train.bin"
        smoke_file.write_bytes(smoke.train_bytes())

        def generate() -> None:
            smoke.block.cache_clear()
            smoke.train_bytes()

        t_gen, t_read = _best(generate, repeat), _best(smoke_file.read_bytes, repeat)
        size = smoke.TRAIN_BLOCKS * smoke.BLOCK_BYTES
        rows.append(("smoke train split (4 MiB) generated", size / t_gen, size / t_read, "bytes/s"))

    tables = ByteTables.from_sentencepiece(MODEL) if MODEL.is_file() else ByteTables.byte_level(1024)
    seq_tokens = rng.integers(0, 1024, val_tokens, dtype=np.uint16)
    t_acc = _best(lambda: tables.target_bytes(seq_tokens[:-1], seq_tokens[1:]).sum(), repeat)
    t_look = _best(lambda: tables.base_bytes[seq_tokens[1:]].sum(dtype=np.int64), repeat)
    rows.append(("val_bpb byte accounting", val_tokens / t_acc, val_tokens / t_look, "tokens/s"))

    machine = f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores), Python {platform.python_version()}, numpy {np.__version__}"
    settings = dict(shards=shards, shard_tokens=shard_tokens, batch=batch, seq=seq, steps=steps, val_tokens=val_tokens, repeat=repeat)
    if as_json:
        print(json.dumps({"machine": machine, "settings": settings, "rows": [
            {"what": w, "ours_per_s": o, "baseline_per_s": b, "unit": u, "ratio": o / b} for w, o, b, u in rows]}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"p2pgolf data pipeline - {machine}", caption=" ".join(f"{k}={v}" for k, v in settings.items()))
    for col in ("what", "ours", "baseline", "unit", "ours / baseline"):
        table.add_column(col, justify="left" if col in ("what", "unit") else "right")
    for what, o, b, unit in rows:
        table.add_row(what, f"{o:,.0f}", f"{b:,.0f}", unit, f"{o / b:.3g}")
    Console().print(table)


if __name__ == "__main__":
    main()

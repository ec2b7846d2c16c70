"""Where a script finds its benchmark's data: DATA_PATH and TOKENIZER_PATH for a tokenizer variant.

- parameter-golf: `<data_dir>/datasets/fineweb10B_<variant>` and `<data_dir>/tokenizers/
  fineweb_<N>_bpe.model`, as `p2pgolf data fetch --variant` lays them out (the challenge's own
  layout); DataError naming the fetch command if they are missing.
- smoke: the generated smoke tokens written once as challenge-format shards
  (`fineweb_train_000000.bin`, `fineweb_val_000000.bin`, byte-level: TOKENIZER_PATH empty) under
  `<cache_dir>/smoke-byte256`, so a script reads the smoke benchmark as it reads the challenge's.
- custom (`p2pgolf data build`): the dataset directory and its tokenizer.
"""

from __future__ import annotations

import os
from pathlib import Path

from p2pgolf.protocol.benchmarks import Benchmark
from p2pgolf.trainer.datasets import CHALLENGE_VARIANTS, CUSTOM_TASK, DataError, read_custom_manifest

VARIANT_VOCAB = CHALLENGE_VARIANTS


def script_data_paths(bench: Benchmark, tokenizer: str, data_dir: str | os.PathLike | None, cache_dir: str | os.PathLike) -> tuple[str, str]:
    """(DATA_PATH, TOKENIZER_PATH) for a script candidate with `tokenizer` on `bench`."""
    if bench.task == "smoke-bytes":
        if tokenizer != "byte256":
            raise DataError(f"the smoke benchmark has byte-level data only; tokenizer {tokenizer!r} is not available")
        return str(smoke_shards(Path(cache_dir) / "smoke-byte256")), ""
    if data_dir is None:
        raise DataError(f"benchmark {bench.name} needs a data directory")
    data_dir = Path(data_dir)
    if bench.task == "parameter-golf":
        if tokenizer not in VARIANT_VOCAB:
            raise DataError(f"tokenizer {tokenizer!r} is not a challenge variant; known: {', '.join(VARIANT_VOCAB)}")
        shards = data_dir / "datasets" / f"fineweb10B_{tokenizer}"
        model = data_dir / "tokenizers" / f"fineweb_{VARIANT_VOCAB[tokenizer]}_bpe.model"
        missing = [str(p) for p in (shards, model) if not p.exists()]
        if missing:
            raise DataError(f"data for tokenizer {tokenizer} missing: {', '.join(missing)}; run `p2pgolf data fetch --variant {tokenizer}`")
        return str(shards), str(model)
    if bench.task == CUSTOM_TASK:
        manifest = read_custom_manifest(data_dir)
        return str(data_dir), str(data_dir / manifest["tokenizer"])
    raise DataError(f"benchmark {bench.name}: no data layout for scripts (task {bench.task!r})")


def smoke_shards(directory: Path) -> Path:
    """Write the smoke benchmark's tokens as shards in `directory` (once)."""
    from p2pgolf.trainer import smoke
    from p2pgolf.trainer.shards import write_shard

    directory.mkdir(parents=True, exist_ok=True)
    for name, tokens in (("fineweb_val_000000.bin", smoke.val_tokens), ("fineweb_train_000000.bin", _smoke_train)):
        if not (directory / name).is_file():
            write_shard(directory / name, tokens())  # atomic: a half-written shard never appears
    return directory


def _smoke_train():
    import numpy as np

    from p2pgolf.trainer import smoke

    return np.frombuffer(smoke.train_bytes(), dtype=np.uint8).astype(np.uint16)

"""Benchmark data for every backend: validation tokens, byte tables and a training token stream.

`load_benchmark_data(bench, data_dir)` returns a `BenchData` for the challenge benchmark (shards
fetched by `p2pgolf data fetch`), the offline smoke benchmark (generated, no files) or a custom
benchmark built with `p2pgolf data build`. numpy only: the torch and MLX backends turn the arrays
into tensors. Guarantees: the data are checked against the benchmark (tokenizer sha256, and the
validation digest where the benchmark pins one) before anything trains; a missing file raises
`DataError` naming the file and the command that fetches or builds it; `train_batches` yields the
same windows, in the same order, on every run and machine.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2pgolf.protocol.benchmarks import Benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.trainer.byte_accounting import ByteTables
from p2pgolf.trainer.shards import ShardError, read_shard

CHALLENGE_DATASET = "fineweb10B_sp1024"
CHALLENGE_TOKENIZER = "fineweb_1024_bpe.model"
CHALLENGE_VOCAB = 1024
# The challenge's tokenizer variants: the same validation documents, tokenized by SentencePiece
# BPE models of these sizes (`p2pgolf data fetch --variant` gets them).
CHALLENGE_VARIANTS = {"sp1024": 1024, "sp4096": 4096, "sp8192": 8192}
BOS_ID = 1
CUSTOM_TASK = "custom-text"
CUSTOM_MANIFEST = "p2pgolf-dataset.json"
DEFAULT_SIZE_CAP = 16_000_000


class DataError(ValueError):
    """Benchmark data missing or not matching the benchmark; the message says what to run."""


@dataclass(frozen=True)
class Batch:
    """One training step's windows: targets are the inputs shifted by one token (int64, B x T)."""

    inputs: np.ndarray
    targets: np.ndarray


class TokenStream:
    """Reads a list of token chunks (shards or generated blocks) front to back, wrapping around.

    Chunks are loaded only when the reader reaches them, so a long training split costs nothing
    until it is used.
    """

    def __init__(self, chunks: Sequence[Callable[[], np.ndarray]], name: str = "train"):
        if not chunks:
            raise DataError(f"no {name} data to stream")
        self._chunks = list(chunks)
        self._name = name
        self._index = 0
        self._tokens = self._load(0)
        self._pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next `n` tokens as a new uint16 array, crossing chunk ends (and wrapping) as needed."""
        if n < 0:
            raise ValueError(f"cannot take {n} tokens")
        out = np.empty(n, dtype=np.uint16)
        filled = 0
        empty_in_a_row = 0
        while filled < n:
            left = len(self._tokens) - self._pos
            if left <= 0:
                self._index = (self._index + 1) % len(self._chunks)
                self._tokens = self._load(self._index)
                self._pos = 0
                empty_in_a_row = empty_in_a_row + 1 if len(self._tokens) == 0 else 0
                if empty_in_a_row > len(self._chunks):
                    raise DataError(f"every {self._name} chunk is empty")
                continue
            k = min(left, n - filled)
            out[filled : filled + k] = self._tokens[self._pos : self._pos + k]
            self._pos += k
            filled += k
        return out

    def _load(self, i: int) -> np.ndarray:
        return self._chunks[i]()


@dataclass(frozen=True, eq=False)
class BenchData:
    """Everything a backend needs about a benchmark's data."""

    bench: Benchmark
    vocab_size: int
    byte_tables: ByteTables
    val_tokens: np.ndarray  # uint16; BOS before each document for tokenizer benchmarks
    train_chunks: tuple[Callable[[], np.ndarray], ...]
    train_tokens_available: int | None  # None when the split is generated lazily and not counted
    bos_id: int | None
    tokenizer_path: Path | None

    def train_stream(self) -> TokenStream:
        """A fresh stream over the training split, from its first token."""
        return TokenStream(self.train_chunks)

    def train_batches(self, batch_size: int, seq_len: int, *, rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """`train_batches` over a fresh stream of this benchmark's training split."""
        return train_batches(self.train_stream(), batch_size, seq_len, rank=rank, world=world)

    @property
    def val_bytes(self) -> int:
        """Bytes the validation targets stand for (the val_bpb denominator over the whole split)."""
        return self.byte_tables.sequence_bytes(self.val_tokens)


def train_batches(stream: TokenStream, batch_size: int, seq_len: int, *, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """Endless contiguous (inputs, targets) windows; with `world` ranks each takes its own span.

    Each step reads world * batch_size * seq_len + 1 tokens from the stream, as the challenge's
    loader does; rank r uses the r-th span, so ranks never see the same tokens in one step.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside [0, {world})")
    local = batch_size * seq_len
    while True:
        chunk = stream.take(world * local + 1)
        span = chunk[rank * local : rank * local + local + 1].astype(np.int64)
        yield Batch(inputs=span[:-1].reshape(batch_size, seq_len), targets=span[1:].reshape(batch_size, seq_len))


def load_benchmark_data(bench: Benchmark, data_dir: str | os.PathLike | None, tokenizer: str | None = None) -> BenchData:
    """The data of `bench` under the candidate's `tokenizer` (None: the benchmark's own), checked
    against it. Raises DataError with the fix if anything is missing or the benchmark has no
    such tokenizer."""
    tokenizer = tokenizer or bench.tokenizer
    if bench.task != "parameter-golf" and tokenizer != bench.tokenizer:
        raise DataError(f"benchmark {bench.name} has data in its tokenizer {bench.tokenizer} only, not {tokenizer}")
    if bench.task == "smoke-bytes":
        return _smoke_data(bench)
    if data_dir is None:
        raise DataError(f"benchmark {bench.name} needs a data directory (--data-dir)")
    data_dir = Path(data_dir)
    if bench.task == "parameter-golf":
        if tokenizer == "sp1024":
            return _challenge_data(bench, data_dir)
        return _variant_data(bench, data_dir, tokenizer)
    if bench.task == CUSTOM_TASK:
        return _custom_data(bench, data_dir)
    raise DataError(f"benchmark {bench.name}: no data loader for task {bench.task!r}")


def custom_benchmark(
    data_dir: str | os.PathLike,
    budget_s: float = 600.0,
    size_cap: int = DEFAULT_SIZE_CAP,
    name: str | None = None,
) -> Benchmark:
    """The benchmark defined by shards built with `p2pgolf data build` (id from their digests)."""
    manifest = read_custom_manifest(Path(data_dir))
    label = name or f"custom/{manifest['name']}"
    try:
        return Benchmark(
            name=label,
            task=CUSTOM_TASK,
            val_digest=manifest["val_sha256"],
            tokenizer_digest=manifest["tokenizer_sha256"],
            budget_s=float(budget_s),
            size_cap=int(size_cap),
            # a custom tokenizer is named by its digest: candidates on it never mix with sp1024's
            tokenizer=f"custom-{str(manifest['tokenizer_sha256'])[:16]}",
        )
    except ProtocolError as exc:
        raise DataError(f"{Path(data_dir) / CUSTOM_MANIFEST}: {exc}") from None


def read_custom_manifest(data_dir: Path) -> dict:
    """The manifest written by `p2pgolf data build`, with its required fields checked."""
    path = data_dir / CUSTOM_MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path} not found: build a custom dataset with "
            f"`p2pgolf data build --tokenizer MODEL --out {data_dir} TEXT_FILES...`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON manifest ({exc})") from None
    required = ("name", "tokenizer", "tokenizer_sha256", "val_sha256", "vocab_size", "val_files", "train_files")
    missing = [k for k in required if k not in manifest] if isinstance(manifest, dict) else list(required)
    if missing:
        raise DataError(f"{path}: manifest lacks {', '.join(missing)}")
    return manifest


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def files_sha256(paths: Sequence[Path]) -> str:
    """sha256 of the concatenated bytes of several files, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                h.update(piece)
    return h.hexdigest()


def _smoke_data(bench: Benchmark) -> BenchData:
    from p2pgolf.trainer import smoke

    val = smoke.val_tokens()
    digest = hashlib.sha256(val.astype(np.uint8).tobytes()).hexdigest()
    if digest != bench.val_digest:
        raise DataError(
            f"smoke validation data sha256 {digest} differs from benchmark {bench.name}'s {bench.val_digest}: "
            "this trainer's smoke generator does not match the protocol"
        )
    chunks = tuple(_SmokeBlock(i) for i in range(smoke.TRAIN_BLOCKS))
    return BenchData(
        bench=bench,
        vocab_size=smoke.VOCAB_SIZE,
        byte_tables=ByteTables.byte_level(smoke.VOCAB_SIZE),
        val_tokens=val,
        train_chunks=chunks,
        train_tokens_available=smoke.TRAIN_BLOCKS * smoke.BLOCK_BYTES,
        bos_id=None,
        tokenizer_path=None,
    )


@dataclass(frozen=True)
class _SmokeBlock:
    index: int

    def __call__(self) -> np.ndarray:
        from p2pgolf.trainer import smoke

        return smoke.block_tokens("train", self.index)


@dataclass(frozen=True)
class _ShardChunk:
    path: Path

    def __call__(self) -> np.ndarray:
        return read_shard(self.path)


def _challenge_data(bench: Benchmark, data_dir: Path) -> BenchData:
    fetch_hint = f"run `p2pgolf data fetch --data-dir {data_dir}`"
    shard_dir = data_dir / "datasets" / CHALLENGE_DATASET
    tokenizer = data_dir / "tokenizers" / CHALLENGE_TOKENIZER
    val_files = sorted(shard_dir.glob("fineweb_val_*.bin"))
    train_files = sorted(shard_dir.glob("fineweb_train_*.bin"))
    missing = []
    if not tokenizer.is_file():
        missing.append(str(tokenizer))
    if not val_files:
        missing.append(str(shard_dir / "fineweb_val_*.bin"))
    if not train_files:
        missing.append(str(shard_dir / "fineweb_train_*.bin"))
    if missing:
        raise DataError(f"challenge data missing: {', '.join(missing)}; {fetch_hint}")
    digest = file_sha256(tokenizer)
    if digest != bench.tokenizer_digest:
        raise DataError(f"{tokenizer}: sha256 {digest} is not benchmark {bench.name}'s tokenizer {bench.tokenizer_digest}; {fetch_hint}")
    return _shard_data(bench, tokenizer, val_files, train_files, CHALLENGE_VOCAB)


def _variant_data(bench: Benchmark, data_dir: Path, variant: str) -> BenchData:
    """The challenge's validation documents and training data in another tokenizer variant. No
    digest is pinned for its tokenizer: it must be a SentencePiece model of the variant's size."""
    if variant not in CHALLENGE_VARIANTS:
        raise DataError(f"tokenizer {variant!r} is not a challenge variant; known: {', '.join(CHALLENGE_VARIANTS)}")
    vocab = CHALLENGE_VARIANTS[variant]
    fetch_hint = f"run `p2pgolf data fetch --variant {variant} --data-dir {data_dir}`"
    shard_dir = data_dir / "datasets" / f"fineweb10B_{variant}"
    tokenizer = data_dir / "tokenizers" / f"fineweb_{vocab}_bpe.model"
    val_files = sorted(shard_dir.glob("fineweb_val_*.bin"))
    train_files = sorted(shard_dir.glob("fineweb_train_*.bin"))
    missing = [str(p) for p, ok in ((tokenizer, tokenizer.is_file()), (shard_dir / "fineweb_val_*.bin", bool(val_files)), (shard_dir / "fineweb_train_*.bin", bool(train_files))) if not ok]
    if missing:
        raise DataError(f"challenge data ({variant}) missing: {', '.join(missing)}; {fetch_hint}")
    from p2pgolf.trainer.fetch import FetchError, variant_tokenizer_check  # fetch imports this module

    try:
        variant_tokenizer_check(variant)(tokenizer, str(tokenizer))  # a SentencePiece model of the variant's size
    except FetchError as exc:
        raise DataError(f"{exc}; {fetch_hint}") from None
    return _shard_data(bench, tokenizer, val_files, train_files, vocab)


def _custom_data(bench: Benchmark, data_dir: Path) -> BenchData:
    manifest = read_custom_manifest(data_dir)
    tokenizer = data_dir / manifest["tokenizer"]
    val_files = [data_dir / name for name in manifest["val_files"]]
    train_files = [data_dir / name for name in manifest["train_files"]]
    missing = [str(p) for p in [tokenizer, *val_files, *train_files] if not p.is_file()]
    if missing:
        raise DataError(f"custom data incomplete: missing {', '.join(missing)}; rebuild it with `p2pgolf data build`")
    if not train_files:
        raise DataError(f"{data_dir / CUSTOM_MANIFEST}: no training shards; build with fewer validation documents")
    tok_digest = file_sha256(tokenizer)
    if tok_digest != bench.tokenizer_digest:
        raise DataError(f"{tokenizer}: sha256 {tok_digest} is not benchmark {bench.name}'s tokenizer {bench.tokenizer_digest}")
    val_digest = files_sha256(val_files)
    if val_digest != bench.val_digest:
        raise DataError(f"{data_dir}: validation shards' sha256 {val_digest} is not benchmark {bench.name}'s {bench.val_digest}")
    return _shard_data(bench, tokenizer, val_files, train_files, int(manifest["vocab_size"]))


def _shard_data(bench: Benchmark, tokenizer: Path, val_files: list[Path], train_files: list[Path], vocab: int) -> BenchData:
    try:
        val_parts = [read_shard(p) for p in val_files]
        train_counts = sum(len(read_shard(p)) for p in train_files)  # checks every header up front
    except ShardError as exc:
        raise DataError(str(exc)) from None
    val = np.concatenate(val_parts).astype(np.uint16) if val_parts else np.zeros(0, np.uint16)
    tables = ByteTables.from_sentencepiece(tokenizer, vocab)
    top = int(val.max()) if val.size else 0
    if top >= tables.size:
        raise DataError(f"validation token id {top} is outside the tokenizer's {tables.size} ids")
    return BenchData(
        bench=bench,
        vocab_size=max(vocab, tables.size),
        byte_tables=tables,
        val_tokens=val,
        train_chunks=tuple(_ShardChunk(p) for p in train_files),
        train_tokens_available=train_counts,
        bos_id=BOS_ID,
        tokenizer_path=tokenizer,
    )

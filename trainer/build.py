"""Build challenge-format shards from a user's own text and SentencePiece model.

Documents: each line of a `.jsonl` file is one document (its "text" field); in any other file,
documents are separated by one or more blank lines (`doc_split="blank-line"`, the default), or
each non-empty line is a document (`"line"`), or the whole file is one (`"file"`). Each document
is written as BOS (id 1) followed by its tokens, no EOS, as the challenge does. The first
`val_docs` documents (or the first `val_fraction` of them, at least one) form the validation
split, the rest the training split. The output directory gets the shards, a copy of the
tokenizer and `p2pgolf-dataset.json` (tokenizer sha256, validation digest = sha256 of the
validation shard bytes, counts), from which `trainer.datasets.custom_benchmark` derives a
benchmark id. Guarantees: identical inputs give identical bytes; existing files in the output
directory are never overwritten (build into an empty or new directory).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from p2pgolf.trainer.datasets import BOS_ID, CUSTOM_MANIFEST, file_sha256, files_sha256
from p2pgolf.trainer.shards import write_shard

DOC_SPLITS = ("blank-line", "line", "file")
DEFAULT_SHARD_TOKENS = 100_000_000  # the challenge's shard size
MANIFEST_FORMAT = "p2pgolf-dataset/1"
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n\s*")


class BuildError(ValueError):
    """Bad input to a build; the message names the file or option."""


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote."""

    out_dir: Path
    manifest_path: Path
    val_files: tuple[Path, ...]
    train_files: tuple[Path, ...]
    docs_val: int
    docs_train: int
    tokens_val: int
    tokens_train: int
    val_sha256: str
    tokenizer_sha256: str


def build_shards_from_text(
    text_paths: Sequence[str | os.PathLike],
    tokenizer_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_docs: int | None = None,
    val_fraction: float | None = None,
    doc_split: str = "blank-line",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    name: str | None = None,
) -> BuildResult:
    """Tokenize documents from `text_paths` into val/train shards in `out_dir` (see module doc)."""
    import sentencepiece as spm

    if doc_split not in DOC_SPLITS:
        raise BuildError(f"doc_split {doc_split!r} is not one of {', '.join(DOC_SPLITS)}")
    if (val_docs is None) == (val_fraction is None):
        raise BuildError("give exactly one of val_docs (a count) or val_fraction (0 < f < 1)")
    if val_docs is not None and val_docs < 1:
        raise BuildError(f"val_docs must be at least 1, got {val_docs}")
    if val_fraction is not None and not 0 < val_fraction < 1:
        raise BuildError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise BuildError(f"shard_tokens must be positive, got {shard_tokens}")
    paths = [Path(p) for p in text_paths]
    if not paths:
        raise BuildError("no text files given")
    for p in paths:
        if not p.is_file():
            raise BuildError(f"{p}: text file not found")
    tokenizer_path = Path(tokenizer_path)
    if not tokenizer_path.is_file():
        raise BuildError(f"{tokenizer_path}: tokenizer model not found")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    except (OSError, RuntimeError) as exc:
        raise BuildError(f"{tokenizer_path}: not a SentencePiece model ({exc})") from None
    if sp.vocab_size() > 1 << 16:
        raise BuildError(f"{tokenizer_path}: vocabulary of {sp.vocab_size()} does not fit uint16 shards")
    if sp.bos_id() != BOS_ID:
        raise BuildError(f"{tokenizer_path}: BOS id is {sp.bos_id()}, the shard format needs {BOS_ID}")

    out = Path(out_dir)
    _check_out_dir(out)
    docs = [d for p in paths for d in _documents(p, doc_split)]
    if len(docs) < 2:
        raise BuildError(f"found {len(docs)} document(s); need at least 2 (one validation, one training)")
    n_val = val_docs if val_docs is not None else max(1, math.floor(len(docs) * val_fraction))
    if n_val >= len(docs):
        raise BuildError(f"val_docs={n_val} leaves no training documents out of {len(docs)}")

    out.mkdir(parents=True, exist_ok=True)
    encoded = sp.encode(docs)
    val_files, tokens_val = _write_split(out, "val", encoded[:n_val], shard_tokens)
    train_files, tokens_train = _write_split(out, "train", encoded[n_val:], shard_tokens)
    tok_copy = out / "tokenizer.model"
    shutil.copyfile(tokenizer_path, tok_copy)
    result = BuildResult(
        out_dir=out,
        manifest_path=out / CUSTOM_MANIFEST,
        val_files=tuple(val_files),
        train_files=tuple(train_files),
        docs_val=n_val,
        docs_train=len(docs) - n_val,
        tokens_val=tokens_val,
        tokens_train=tokens_train,
        val_sha256=files_sha256(val_files),
        tokenizer_sha256=file_sha256(tok_copy),
    )
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name or out.resolve().name,
        "tokenizer": tok_copy.name,
        "tokenizer_sha256": result.tokenizer_sha256,
        "vocab_size": int(sp.vocab_size()),
        "bos_id": BOS_ID,
        "doc_split": doc_split,
        "sources": [p.name for p in paths],
        "val_sha256": result.val_sha256,
        "val_files": [p.name for p in val_files],
        "train_files": [p.name for p in train_files],
        "docs_val": result.docs_val,
        "docs_train": result.docs_train,
        "tokens_val": tokens_val,
        "tokens_train": tokens_train,
    }
    result.manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: exists and is not a directory")
    if out.is_dir():
        clashes = sorted(p.name for p in out.iterdir() if p.name == CUSTOM_MANIFEST or p.suffix in (".bin", ".model"))
        if clashes:
            raise BuildError(f"{out}: already holds {', '.join(clashes[:3])}; build into an empty directory")


def _documents(path: Path, doc_split: str) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BuildError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BuildError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise BuildError(f'{path}:{lineno}: expected an object with a string "text" field')
            if obj["text"]:
                yield obj["text"]
        return
    if doc_split == "file":
        if text.strip():
            yield text
        return
    pieces = text.splitlines() if doc_split == "line" else _BLANK_LINES.split(text)
    for piece in pieces:
        if piece.strip():
            yield piece


def _write_split(out: Path, split: str, docs: Sequence[Sequence[int]], shard_tokens: int) -> tuple[list[Path], int]:
    files: list[Path] = []
    total = 0
    buf: list[np.ndarray] = []
    fill = 0

    def flush() -> None:
        nonlocal buf, fill
        if fill:
            path = out / f"text_{split}_{len(files):06d}.bin"
            write_shard(path, np.concatenate(buf))
            files.append(path)
            buf, fill = [], 0

    for ids in docs:
        doc = np.empty(len(ids) + 1, dtype=np.uint16)
        doc[0] = BOS_ID
        doc[1:] = ids
        total += len(doc)
        start = 0
        while start < len(doc):  # a long document continues into the next shard, as the challenge's do
            take = min(len(doc) - start, shard_tokens - fill)
            buf.append(doc[start : start + take])
            fill += take
            start += take
            if fill == shard_tokens:
                flush()
    flush()
    return files, total

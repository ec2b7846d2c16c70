"""Download the Parameter Golf challenge data (sp1024, or another tokenizer variant) from the Hugging Face Hub.

Files and layout follow the challenge's own downloader: dataset repo
`willdepueoai/parameter-golf`, everything under `datasets/` there (`manifest.json`,
`datasets/fineweb10B_sp1024/fineweb_{val,train}_NNNNNN.bin`, `tokenizers/fineweb_1024_bpe.*`),
stored under the data directory without the leading `datasets/` (so `DATA/manifest.json`,
`DATA/datasets/fineweb10B_sp1024/...`, `DATA/tokenizers/...`). The manifest says how many
validation and training shards exist and which tokenizer files belong to the dataset.
`variant` picks the dataset `fineweb10B_<variant>` (sp1024, sp4096, sp8192 as the challenge's
dataset names them) and its tokenizer `fineweb_<N>_bpe.model`.

Guarantees: a file appears under its final name only complete and checked (every shard's
header and size, and for a variant other than sp1024 that its token ids fit the variant's
vocabulary; the sp1024 tokenizer's sha256 against the pinned one, another variant's tokenizer
loaded by SentencePiece with exactly N pieces); a download runs into
`NAME.part` beside it, with the remote ETag in `NAME.part.json`, so an interrupted fetch -
a dropped connection within a run (huggingface_hub retries with a Range request) or a killed
process (the next run continues from the bytes on disk) - continues where it stopped instead
of starting over; files already present are checked and kept, never re-downloaded or
deleted. The Hub endpoint is huggingface_hub's (`HF_ENDPOINT` is honoured), so a mirror or a
test server can stand in.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from p2pgolf.protocol.benchmarks import SP1024_TOKENIZER_SHA256
from p2pgolf.trainer.datasets import file_sha256
from p2pgolf.trainer.shards import ShardError, read_shard, shard_token_count

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
MANIFEST = "manifest.json"
_TOKENIZER_PATH = re.compile(r"tokenizers/[A-Za-z0-9._-]+")
# Tokenizer variants of the challenge dataset and their vocabulary sizes.
VARIANTS = {"sp1024": 1024, "sp4096": 4096, "sp8192": 8192}


def dataset_name(variant: str) -> str:
    """The dataset folder of a variant, e.g. fineweb10B_sp4096 (FetchError for an unknown one)."""
    _vocab(variant)
    return f"fineweb10B_{variant}"


def tokenizer_file(variant: str) -> str:
    """The tokenizer model file of a variant, e.g. fineweb_4096_bpe.model."""
    return f"fineweb_{_vocab(variant)}_bpe.model"


def _vocab(variant: str) -> int:
    if variant not in VARIANTS:
        raise FetchError(f"unknown data variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[variant]


class FetchError(RuntimeError):
    """A download that could not be completed or checked; the message names the file."""


@dataclass(frozen=True)
class FetchResult:
    """What a fetch did: files it downloaded, files it found already complete, bytes received."""

    data_dir: Path
    downloaded: tuple[str, ...]
    present: tuple[str, ...]
    bytes_received: int
    train_shards: int
    val_shards: int


def fetch_challenge_data(
    data_dir: str | os.PathLike,
    train_shards: int = 1,
    *,
    repo_id: str = REPO_ID,
    revision: str = "main",
    endpoint: str | None = None,
    token: str | bool | None = None,
    progress: bool = True,
    variant: str = "sp1024",
) -> FetchResult:
    """Fetch the manifest, every validation shard, the first `train_shards` training shards and
    the tokenizer of `variant` into `data_dir` (see the module docstring for what is guaranteed)."""
    vocab = _vocab(variant)
    if train_shards < 0:
        raise FetchError(f"--train-shards must be 0 or more, got {train_shards}")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    session = _Session(repo_id, revision, endpoint, token, progress)
    try:
        manifest_local = data_dir / MANIFEST
        session.get(f"{REMOTE_ROOT}/{MANIFEST}", manifest_local, check=_check_manifest)
        manifest = _read_manifest(manifest_local)
        n_val, n_train, tokenizer_files = _plan(manifest, manifest_local, variant)
        if train_shards > n_train:
            raise FetchError(f"the challenge has {n_train} training shards; --train-shards {train_shards} asks for more")
        jobs: list[tuple[str, Path, Callable[[Path, str], None]]] = []
        shard_check = _check_shard if variant == "sp1024" else _shard_check_within(vocab)
        for split, count in (("val", n_val), ("train", train_shards)):
            for i in range(count):
                rel = f"datasets/{dataset_name(variant)}/fineweb_{split}_{i:06d}.bin"
                jobs.append((f"{REMOTE_ROOT}/{rel}", data_dir / rel, shard_check))
        for rel in tokenizer_files:
            check = variant_tokenizer_check(variant) if PurePosixPath(rel).name == tokenizer_file(variant) else _check_nothing
            jobs.append((f"{REMOTE_ROOT}/{rel}", data_dir / rel, check))
        for remote, local, check in jobs:
            session.get(remote, local, check=check)
    finally:
        session.close()
    return FetchResult(
        data_dir=data_dir,
        downloaded=tuple(session.downloaded),
        present=tuple(session.present),
        bytes_received=session.bytes_received,
        train_shards=train_shards,
        val_shards=n_val,
    )


def _check_shard(path: Path, name: str) -> None:
    try:
        shard_token_count(path)
    except ShardError as exc:
        raise FetchError(f"{name}: not a valid shard: {str(exc).split(': ', 1)[-1]}") from None


def _check_tokenizer(path: Path, name: str) -> None:
    digest = file_sha256(path)
    if digest != SP1024_TOKENIZER_SHA256:
        raise FetchError(f"{name}: sha256 {digest} is not the challenge tokenizer's {SP1024_TOKENIZER_SHA256}")


def variant_tokenizer_check(variant: str) -> Callable[[Path, str], None]:
    """sp1024's file is pinned by digest; another variant's must load as a SentencePiece model
    with exactly its vocabulary size (no digest is pinned for it yet)."""
    if variant == "sp1024":
        return _check_tokenizer
    vocab = _vocab(variant)

    def check(path: Path, name: str) -> None:
        import sentencepiece as spm

        try:
            pieces = spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError for a bad file
            raise FetchError(f"{name}: not a SentencePiece model ({_one_line(exc)})") from None
        if pieces != vocab:
            raise FetchError(f"{name}: {pieces} pieces; the {variant} tokenizer has {vocab}")

    return check


def _shard_check_within(vocab: int) -> Callable[[Path, str], None]:
    def check(path: Path, name: str) -> None:
        _check_shard(path, name)
        tokens = read_shard(path)
        if tokens.size and int(tokens.max()) >= vocab:
            raise FetchError(f"{name}: token id {int(tokens.max())} is outside the variant's vocabulary of {vocab}")

    return check


def _check_manifest(path: Path, name: str) -> None:
    _read_manifest(path, name)


def _check_nothing(path: Path, name: str) -> None:
    return None


def _read_manifest(path: Path, name: str | None = None) -> dict[str, Any]:
    label = name or str(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"{label}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise FetchError(f"{label}: manifest must be a JSON object")
    return manifest


def _plan(manifest: dict[str, Any], where: Path, variant: str = "sp1024") -> tuple[int, int, list[str]]:
    """(validation shards, training shards available, tokenizer file paths) from the manifest."""
    dataset, tok_file = dataset_name(variant), tokenizer_file(variant)
    entry = _named(manifest.get("datasets"), dataset)
    if entry is None:
        raise FetchError(f"{where}: no dataset named {dataset}")
    stats = entry.get("stats")
    n_val = stats.get("files_val") if isinstance(stats, dict) else None
    n_train = stats.get("files_train") if isinstance(stats, dict) else None
    if type(n_val) is not int or type(n_train) is not int:
        raise FetchError(f"{where}: dataset {dataset} lacks integer stats.files_val / stats.files_train")
    if not (1 <= n_val <= 10_000 and 0 <= n_train <= 100_000):
        raise FetchError(f"{where}: implausible shard counts val={n_val} train={n_train}")
    tok_name = entry.get("tokenizer_name")
    tok = _named(manifest.get("tokenizers"), tok_name) if isinstance(tok_name, str) else None
    if tok is None:
        raise FetchError(f"{where}: tokenizer {tok_name!r} of {dataset} is not listed")
    files = [tok[k] for k in ("model_path", "vocab_path", "path") if tok.get(k)]
    for rel in files:  # the manifest comes from the network: keep its paths inside tokenizers/
        if not isinstance(rel, str) or not _TOKENIZER_PATH.fullmatch(rel) or rel.endswith(("/.", "/..")):
            raise FetchError(f"{where}: tokenizer path {rel!r} is not a file under tokenizers/")
    if not any(PurePosixPath(f).name == tok_file for f in files):
        raise FetchError(f"{where}: tokenizer {tok_name!r} does not provide {tok_file}")
    return n_val, n_train, files


def _named(entries: Any, name: str) -> dict[str, Any] | None:
    """The first object in a manifest list whose "name" is `name`."""
    if not isinstance(entries, list):
        return None
    return next((e for e in entries if isinstance(e, dict) and e.get("name") == name), None)


class _Session:
    """One fetch: huggingface_hub for URLs, metadata and ranged GETs; rich for the progress bar."""

    def __init__(self, repo_id: str, revision: str, endpoint: str | None, token: str | bool | None, progress: bool):
        from huggingface_hub.utils import build_hf_headers

        self.repo_id, self.revision, self.endpoint, self.token = repo_id, revision, endpoint, token
        self.headers = build_hf_headers(token=token, library_name="p2pgolf")
        self.downloaded: list[str] = []
        self.present: list[str] = []
        self.bytes_received = 0
        self._progress = None
        if progress:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def get(self, remote: str, local: Path, *, check: Callable[[Path, str], None]) -> None:
        """Make `local` a complete, checked copy of `remote` (kept as is if already there)."""
        if local.exists():
            try:
                check(local, str(local))
            except FetchError as exc:
                raise FetchError(f"{exc}; it is already on disk: move it away and fetch again") from None
            self.present.append(remote)
            return
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(self.repo_id, remote, repo_type="dataset", revision=self.revision, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token, headers=self.headers, endpoint=self.endpoint)
        except Exception as exc:  # huggingface_hub and its HTTP client raise many types; report one line
            raise FetchError(f"{remote}: could not reach it on {self.repo_id}: {_one_line(exc)}") from None
        if meta.etag is None or meta.commit_hash is None:
            raise FetchError(f"{remote}: the server did not answer like the Hugging Face Hub (no ETag / X-Repo-Commit)")
        part = local.with_name(local.name + ".part")
        note = local.with_name(local.name + ".part.json")
        resume = _resumable_bytes(part, note, meta.etag, meta.size)
        local.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps({"etag": meta.etag, "size": meta.size, "remote": remote}), encoding="utf-8")
        task = None
        if self._progress is not None:
            task = self._progress.add_task(PurePosixPath(remote).name, total=meta.size, completed=resume)
        with part.open("ab") as f:
            sink = _CountingFile(f, self._progress, task)
            try:
                _http_get(meta.location, sink, resume_size=resume, headers=self.headers, expected_size=meta.size, name=remote)
            except Exception as exc:
                raise FetchError(f"{remote}: download stopped after {resume + sink.count} bytes ({_one_line(exc)}); run fetch again to continue") from None
            finally:
                self.bytes_received += sink.count
        try:
            check(part, remote)
        except FetchError:
            part.unlink(missing_ok=True)  # a bad download is not data: the next fetch starts it afresh
            note.unlink(missing_ok=True)
            raise
        os.replace(part, local)
        note.unlink(missing_ok=True)
        self.downloaded.append(remote)


def _resumable_bytes(part: Path, note: Path, etag: str, size: int | None) -> int:
    """Bytes of an earlier partial download of the same remote version, else 0 (and a clean file)."""
    if part.exists() and note.exists():
        try:
            previous = json.loads(note.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {}
        have = part.stat().st_size
        if previous.get("etag") == etag and (size is None or have <= size):
            return have
    part.unlink(missing_ok=True)  # another version, or no record of which: start over
    return 0


def _http_get(url: str, sink: "_CountingFile", *, resume_size: int, headers: dict, expected_size: int | None, name: str) -> None:
    from huggingface_hub.file_download import http_get
    from tqdm.auto import tqdm

    class _Silent(tqdm):  # our own rich bar reports progress; keep huggingface_hub's quiet
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    http_get(url, sink, resume_size=resume_size, headers=headers, expected_size=expected_size, displayed_filename=name, tqdm_class=_Silent)


class _CountingFile:
    """A write-only file wrapper that counts bytes and advances the progress bar."""

    def __init__(self, f: Any, progress: Any, task: Any):
        self._f, self._progress, self._task = f, progress, task
        self.count = 0

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self.count += len(data)
        if self._progress is not None:
            self._progress.advance(self._task, len(data))
        return n

    def tell(self) -> int:
        return self._f.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        # The server ignored our Range and resent everything: the partial bytes are dropped.
        if self._progress is not None:
            self._progress.update(self._task, completed=0)
        return self._f.truncate(size)

    def flush(self) -> None:
        self._f.flush()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

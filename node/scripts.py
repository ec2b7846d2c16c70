"""The node's training scripts: their bytes (in the blob store, by SHA-256) and their approval.

A script reaches a node by `p2pgolf script add PATH|RECORD_DIR` or by a fetch from peers that
ran it (node/script_fetch.py); either way only its bytes are stored. Approval is the only thing
that makes a script runnable: `approve(sha)` records the user's decision for that exact digest,
and `runnable(sha)` is true only for an approved script whose stored bytes still hash to it.
Nothing else (a pinned peer, a record, a fetch) ever sets approval.

The index `scripts.json` in the home holds, per digest: a display name, when and how it came
(added / fetched, and from whom), and the approval time or null. It is written atomically; a
damaged index is a ScriptStoreError naming the file, never a silent reset.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pgolf.node.home import Home
from p2pgolf.pool.blobs import BlobError, BlobStore, check_sha
from p2pgolf.protocol.script_hparams import ScriptVocabulary, read_hyperparameters

INDEX_NAME = "scripts.json"
SCRIPT_CAP = 1 << 20  # bytes; the blob store's cap for kind "script"
# In a record folder (the challenge's records/<track>/<entry>/), the training script is this file.
RECORD_SCRIPT = "train_gpt.py"


class ScriptStoreError(ValueError):
    """A script that cannot be added, found, approved or read; the message says which and why."""


@dataclass(frozen=True)
class ScriptEntry:
    """What the index says about one script."""

    sha: str
    name: str
    added_ms: int
    origin: str  # "added" (by this user) or "fetched" (from a peer)
    source: str  # the path it was added from, or the peer id it was fetched from
    approved_ms: int | None

    @property
    def approved(self) -> bool:
        return self.approved_ms is not None


class ScriptStore:
    """Scripts of one node home. Cheap to construct; every call reads the index afresh."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.blobs = BlobStore(home.blobs_dir, caps={"script": SCRIPT_CAP})
        self.index_path = home.root / INDEX_NAME

    # --- adding ------------------------------------------------------------------------

    def add_path(self, path: str | os.PathLike) -> tuple[ScriptEntry, ScriptVocabulary]:
        """Add a script file, or the training script of a record folder. ScriptStoreError if
        the path is unusable or the script's hyperparameters cannot be read (nothing is stored)."""
        path = Path(path)
        file = path
        if path.is_dir():
            file = path / RECORD_SCRIPT
            if not file.is_file():
                scripts = sorted(p for p in path.glob("*.py") if p.is_file())
                if len(scripts) != 1:
                    found = ", ".join(p.name for p in scripts) or "none"
                    raise ScriptStoreError(f"{path}: a record folder holds {RECORD_SCRIPT} (or exactly one .py file); found {found}")
                file = scripts[0]
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise ScriptStoreError(f"cannot read {file}: {exc.strerror or exc}") from None
        name = f"{path.name}/{file.name}" if path.is_dir() else file.name
        return self.add_bytes(data, name=name, origin="added", source=str(file.resolve()))

    def add_bytes(self, data: bytes, *, name: str, origin: str, source: str) -> tuple[ScriptEntry, ScriptVocabulary]:
        """Store script bytes (size-capped, parsed first) and index them; an existing entry keeps its approval."""
        if len(data) > SCRIPT_CAP:
            raise ScriptStoreError(f"{name}: {len(data)} bytes; a script is at most {SCRIPT_CAP} bytes")
        vocab = read_hyperparameters(data)  # ScriptParseError (a ProtocolError) names what is unreadable
        try:
            sha = self.blobs.put(data, kind="script")
        except BlobError as exc:
            raise ScriptStoreError(str(exc)) from None
        index = self._read()
        if sha not in index:
            index[sha] = {"name": name[:120], "added_ms": _now_ms(), "origin": origin, "source": source[:400], "approved_ms": None}
            self._write(index)
        return self._entry(sha, index[sha]), vocab

    # --- approval ------------------------------------------------------------------------

    def approve(self, sha_or_prefix: str, *, tokenizer: str | None = None) -> ScriptEntry:
        """Mark the script runnable on this node (its bytes are re-hashed first). `tokenizer`:
        the data variant it trains on here (default: the benchmark's, e.g. sp1024)."""
        from p2pgolf.protocol.candidates import check_tokenizer

        sha = self.resolve(sha_or_prefix)
        self.read_bytes(sha)
        index = self._read()
        if tokenizer is not None:
            index[sha]["tokenizer"] = check_tokenizer(tokenizer)
        if index[sha]["approved_ms"] is None:
            index[sha]["approved_ms"] = _now_ms()
        self._write(index)
        return self._entry(sha, index[sha])

    def tokenizer(self, sha: str) -> str | None:
        """The tokenizer variant the user chose for this script at approval, if any."""
        value = self._read().get(sha, {}).get("tokenizer")
        return value if isinstance(value, str) else None

    def revoke(self, sha_or_prefix: str) -> ScriptEntry:
        """Withdraw approval: the research loop stops proposing it; its records stay evidence."""
        sha = self.resolve(sha_or_prefix)
        index = self._read()
        index[sha]["approved_ms"] = None
        self._write(index)
        return self._entry(sha, index[sha])

    def runnable(self, sha: str) -> bool:
        """True only for an approved script whose stored bytes hash to `sha`."""
        entry = self._read().get(sha)
        if entry is None or entry.get("approved_ms") is None:
            return False
        try:
            self.blobs.verified_path(sha)
        except BlobError:
            return False
        return True

    def approved(self) -> list[str]:
        """Digests of the approved scripts (their bytes are checked again when one runs)."""
        return sorted(sha for sha, e in self._read().items() if e.get("approved_ms") is not None)

    # --- reading ------------------------------------------------------------------------

    def entries(self) -> list[ScriptEntry]:
        index = self._read()
        return sorted((self._entry(sha, e) for sha, e in index.items()), key=lambda e: e.added_ms)

    def entry(self, sha_or_prefix: str) -> ScriptEntry:
        sha = self.resolve(sha_or_prefix)
        return self._entry(sha, self._read()[sha])

    def has(self, sha: str) -> bool:
        return sha in self._read() and self.blobs.has(sha)

    def read_bytes(self, sha: str) -> bytes:
        """The script's bytes, re-hashed against `sha`. ScriptStoreError if missing or corrupt."""
        try:
            return self.blobs.get(check_sha(sha))
        except BlobError as exc:
            raise ScriptStoreError(f"script {sha[:12]}: {exc}") from None

    def vocabulary(self, sha: str) -> ScriptVocabulary:
        return read_hyperparameters(self.read_bytes(sha))

    def resolve(self, sha_or_prefix: str) -> str:
        """The full digest of a known script from a unique prefix (at least 4 hex characters)."""
        text = sha_or_prefix.strip().lower().removeprefix("script:")
        if len(text) < 4 or any(c not in "0123456789abcdef" for c in text):
            raise ScriptStoreError(f"{sha_or_prefix!r} is not a script digest or a prefix of at least 4 hex characters")
        matches = [sha for sha in self._read() if sha.startswith(text)]
        if not matches:
            raise ScriptStoreError(f"no script {text!r} in this node; add it with `p2pgolf script add PATH`")
        if len(matches) > 1:
            raise ScriptStoreError(f"{text!r} names {len(matches)} scripts; give more characters")
        return matches[0]

    # --- the index -----------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.index_path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ScriptStoreError(f"cannot read {self.index_path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise ValueError("not an object of objects")
        except ValueError as exc:
            raise ScriptStoreError(f"{self.index_path} is damaged ({exc}); fix or remove it (approvals are in it)") from None
        return data

    def _write(self, index: dict[str, dict[str, Any]]) -> None:
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.index_path)

    @staticmethod
    def _entry(sha: str, e: dict[str, Any]) -> ScriptEntry:
        return ScriptEntry(sha, str(e.get("name", "")), int(e.get("added_ms", 0)), str(e.get("origin", "added")), str(e.get("source", "")), e.get("approved_ms"))


def _now_ms() -> int:
    return int(time.time() * 1000)

"""The blob store: artifacts and scripts kept by their SHA-256, on disk under the node's home.

Layout: `<root>/<sha[:2]>/<sha>` for complete blobs, `<root>/partial/<sha>` for a transfer in
progress (so a fetch cut off half-way resumes where it stopped). A blob's kind ("artifact",
"script") decides its size cap when it is stored and is not remembered.

API (what node/blob_exchange.py, `p2pgolf pool fetch`, `verify` and the script store call):

    store = BlobStore(home.blobs_dir, caps={"artifact": bench.size_cap})
    sha = store.put(data, kind="artifact")              # -> hex digest; BlobError if over the cap
    sha = store.put(data, kind="script", sha=expected)  # BlobError if the digest differs
    sha = store.put_file(path, kind="artifact")         # a run's artifact file, copied in
    store.has(sha) -> bool;  store.size(sha) -> int | None;  store.path(sha) -> Path | None
    store.get(sha) -> bytes                  # re-hashed on every read; BlobError if corrupt
    store.verified_path(sha) -> Path         # the same check, for a caller that opens the file
    store.partial(sha) -> Path;  store.partial_size(sha) -> int
    store.commit_partial(sha, kind=) -> Path # hash checked; a mismatch deletes the partial
    store.discard_partial(sha)
    store.prune(keep=shas, retention=Retention(...)) -> list of removed digests
    store.list() -> [BlobInfo(sha, size, mtime)]
    protected_artifacts(pool, own_key, bench_ids, status) -> set of digests retention keeps

Guarantees:
- A blob is stored only if its bytes hash to its name, and only within its kind's size cap
  (`DEFAULT_CAPS`, or the caps given); a file that no longer hashes to its name (disk damage,
  a hand edit) is refused on read, removed, and reported as BlobError, never returned.
- Writes are atomic (a temporary file, fsync, rename): a crash leaves a complete blob or none.
- `prune` never removes a digest in `keep` (the node passes its own results' artifacts and the
  current best), and otherwise removes the least recently stored/used blobs until at most
  `retention.max_blobs` blobs and `retention.max_bytes` bytes are left.
Digests are 64 lowercase hex characters; anything else is a BlobError naming the value.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("artifact", "script")
# The challenge's cap for artifacts (the benchmark's size_cap; callers pass the bench's own);
# a training script is source text: 1 MiB is far above any real one.
DEFAULT_CAPS: Mapping[str, int] = {"artifact": 16_000_000, "script": 1 << 20}
READ_CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


class BlobError(Exception):
    """A blob that is missing, corrupt, over its cap, or a malformed digest."""


@dataclass(frozen=True)
class Retention:
    """How many blobs besides the protected ones a node keeps (least recently used go first)."""

    max_blobs: int = 200
    max_bytes: int = 2 * 1024**3

    def __post_init__(self) -> None:
        for name in ("max_blobs", "max_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BlobError(f"retention.{name} must be a whole number >= 0, got {value!r}")


@dataclass(frozen=True)
class BlobInfo:
    sha: str
    size: int
    mtime: float


def check_sha(sha: object) -> str:
    """`sha` if it is 64 lowercase hex characters; BlobError naming it otherwise."""
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise BlobError(f"{sha!r} is not a SHA-256 digest (64 lowercase hex characters)")
    return sha


class BlobStore:
    """Content-addressed files under `root` (created on first write)."""

    def __init__(self, root: str | os.PathLike, *, caps: Mapping[str, int] | None = None) -> None:
        self.root = Path(root)
        self.caps = dict(DEFAULT_CAPS)
        if caps:
            unknown = sorted(set(caps) - set(KINDS))
            if unknown:
                raise BlobError(f"unknown blob kind(s) {', '.join(unknown)}; expected {', '.join(KINDS)}")
            self.caps.update(caps)

    # --- reading ------------------------------------------------------------------------

    def cap(self, kind: str) -> int:
        if kind not in self.caps:
            raise BlobError(f"unknown blob kind {kind!r}; expected one of {', '.join(KINDS)}")
        return self.caps[kind]

    def path(self, sha: str) -> Path | None:
        """Where the blob lies, or None if it is not held (not re-hashed: see verified_path)."""
        p = self._file(check_sha(sha))
        return p if p.is_file() else None

    def has(self, sha: str) -> bool:
        return self.path(sha) is not None

    def size(self, sha: str) -> int | None:
        p = self.path(sha)
        return p.stat().st_size if p is not None else None

    def get(self, sha: str) -> bytes:
        """The blob's bytes, checked against its digest. BlobError if missing or corrupt."""
        p = self.verified_path(sha)
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:  # changed between the check and the read
            self._remove(p)
            raise BlobError(f"blob {sha[:12]} changed on disk while being read; removed")
        self.touch(sha)
        return data

    def verified_path(self, sha: str) -> Path:
        """The blob's path after re-hashing its file. BlobError if missing or corrupt (removed)."""
        p = self.path(sha)
        if p is None:
            raise BlobError(f"blob {sha[:12]} is not held here")
        if _hash_file(p) != sha:
            self._remove(p)
            raise BlobError(f"blob {sha[:12]} on disk does not hash to its name (damaged); removed")
        return p

    def list(self) -> list[BlobInfo]:
        out = []
        if not self.root.is_dir():
            return out
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for f in sub.iterdir():
                if _HEX64.fullmatch(f.name) and f.is_file():
                    st = f.stat()
                    out.append(BlobInfo(f.name, st.st_size, st.st_mtime))
        return out

    # --- writing ------------------------------------------------------------------------

    def put(self, data: bytes, *, kind: str, sha: str | None = None) -> str:
        """Store `data` (at most the kind's cap); returns its digest. With `sha`, the data must
        hash to it. Storing a blob already held is a no-op that refreshes its age."""
        cap = self.cap(kind)
        if len(data) > cap:
            raise BlobError(f"{kind} of {len(data):,} bytes is over the cap of {cap:,} bytes")
        actual = hashlib.sha256(data).hexdigest()
        if sha is not None and check_sha(sha) != actual:
            raise BlobError(f"{kind} bytes hash to {actual[:12]}, not to {sha[:12]} as expected")
        if self.has(actual):
            self.touch(actual)
            return actual
        target = self._file(actual)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{actual}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        return actual

    def put_file(self, path: str | os.PathLike, *, kind: str, sha: str | None = None) -> str:
        """Store the file at `path` (copied; the original stays). Same rules as `put`."""
        p = Path(path)
        size = p.stat().st_size
        cap = self.cap(kind)
        if size > cap:
            raise BlobError(f"{kind} file {p} of {size:,} bytes is over the cap of {cap:,} bytes")
        return self.put(p.read_bytes(), kind=kind, sha=sha)

    def touch(self, sha: str) -> None:
        """Mark a blob as just used (retention removes the least recently used first)."""
        p = self.path(sha)
        if p is not None:
            now = time.time()
            os.utime(p, (now, now))

    def delete(self, sha: str) -> bool:
        p = self.path(sha)
        if p is None:
            return False
        self._remove(p)
        return True

    # --- transfers in progress ----------------------------------------------------------

    def partial(self, sha: str) -> Path:
        """The file a transfer of `sha` appends to (its parent directory exists)."""
        p = self.root / "partial" / check_sha(sha)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def partial_size(self, sha: str) -> int:
        p = self.root / "partial" / check_sha(sha)
        return p.stat().st_size if p.is_file() else 0

    def commit_partial(self, sha: str, *, kind: str) -> Path:
        """Move a finished transfer into the store after checking its size cap and digest; a
        partial that fails either is deleted (the next fetch starts over) and BlobError raised."""
        p = self.root / "partial" / check_sha(sha)
        if not p.is_file():
            raise BlobError(f"no transfer of {sha[:12]} in progress")
        size, cap = p.stat().st_size, self.cap(kind)
        if size > cap:
            self._remove(p)
            raise BlobError(f"{kind} {sha[:12]} of {size:,} bytes is over the cap of {cap:,} bytes; discarded")
        actual = _hash_file(p)
        if actual != sha:
            self._remove(p)
            raise BlobError(f"received bytes hash to {actual[:12]}, not to {sha[:12]}: tampered or mixed transfer; discarded")
        target = self._file(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(p, target)
        self.touch(sha)
        return target

    def discard_partial(self, sha: str) -> None:
        p = self.root / "partial" / check_sha(sha)
        if p.is_file():
            self._remove(p)

    # --- retention ----------------------------------------------------------------------

    def prune(self, *, keep: Iterable[str] = (), retention: Retention = Retention()) -> list[str]:
        """Remove the least recently used blobs not in `keep` until at most `max_blobs` blobs
        and `max_bytes` bytes of unprotected blobs remain. Returns the removed digests."""
        protected = set(keep)
        others = sorted((b for b in self.list() if b.sha not in protected), key=lambda b: (b.mtime, b.sha))
        count, total = len(others), sum(b.size for b in others)
        removed: list[str] = []
        for b in others:
            if count <= retention.max_blobs and total <= retention.max_bytes:
                break
            self._remove(self._file(b.sha))
            removed.append(b.sha)
            count -= 1
            total -= b.size
        return removed

    # --- helpers ------------------------------------------------------------------------

    def _file(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    @staticmethod
    def _remove(p: Path) -> None:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def protected_artifacts(pool: Any, own_key: str, bench_ids: Iterable[str], status: Callable[[str], str] | None = None) -> set[str]:
    """The artifacts retention always keeps: those of every result this node published (own
    key), and per benchmark the current best, which is both the best result by an own or pinned
    key (what this node builds on) and the best claim of anyone (what peers ask to verify).
    `pool` is a PoolStore; `status(author)` gives own/pinned/unknown/blocked (None: own only)."""
    keep: set[str] = set()
    for signed in pool.query(author=own_key, kind="result"):
        if signed.record.artifact:
            keep.add(signed.record.artifact)
    for bench in bench_ids:
        best_trusted = best_any = None
        for signed in pool.query(bench=bench, kind="result", order="val_bpb"):
            if not signed.record.artifact:
                continue
            who = "own" if signed.author == own_key else (status(signed.author) if status else "unknown")
            if who == "blocked":
                continue
            best_any = best_any or signed.record.artifact
            if who in ("own", "pinned"):
                best_trusted = signed.record.artifact
                break
        keep.update(a for a in (best_trusted, best_any) if a)
    return keep


def _hash_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            h.update(chunk)
    return h.hexdigest()

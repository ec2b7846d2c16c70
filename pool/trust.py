"""The trust store: which author keys count fully, a little, or not at all.

Kept in the pool's SQLite file. Every key is a 64-char lowercase hex Ed25519 public key;
anywhere a key is given, a libp2p peer id (12D3KooW...) of an Ed25519 key is accepted too.

Rules (weights feed the estimator):
- own key and pinned keys weigh 1.0, blocked keys 0.0, every other key `unknown_weight`,
  which is strictly between 0 and 1 (default 0.1): unknown peers count a little, never
  nothing and never fully.
- a block overrides a pin: blocking a pinned key makes it blocked (the label is kept);
  pinning a blocked key is refused until it is unblocked.
- the own key can be neither pinned nor blocked; `set_own` with a new key turns the old own
  key into a pinned one labelled "previous own key".
Mistakes raise `TrustError` with one line naming the key and the rule.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import peer_id_from_public_key, public_key_from_peer_id

from p2pgolf.pool import schema

if TYPE_CHECKING:
    from p2pgolf.pool.store import PoolStore

DEFAULT_UNKNOWN_WEIGHT = 0.1
MAX_LABEL_CHARS = 80
STATUSES = ("own", "pinned", "blocked", "unknown")

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class TrustError(ValueError):
    """A trust change that is not allowed, or a key or value that is malformed."""


@dataclass(frozen=True)
class TrustEntry:
    """One key the user has an opinion about."""

    key: str
    status: str  # own | pinned | blocked
    label: str
    since_ms: int

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_key(bytes.fromhex(self.key))


def normalise_key(key: str) -> str:
    """The 64-char lowercase hex public key of a hex key or an Ed25519 peer id."""
    if not isinstance(key, str):
        raise TrustError(f"a key must be text, got {type(key).__name__}")
    text = key.strip()
    if _HEX64.fullmatch(text):
        return text.lower()
    if text.startswith("12D3KooW"):
        try:
            return public_key_from_peer_id(text).hex()
        except ProtocolError as exc:
            raise TrustError(str(exc)) from None
    raise TrustError(f"{key!r} is not a key: expected 64 hex characters or a 12D3KooW... peer id")


class TrustStore:
    """Pins, blocks, labels and the unknown-key weight, persisted in the pool file.

    `TrustStore(path)` opens its own connection; `TrustStore(pool_store)` shares the pool's.
    """

    def __init__(self, source: "str | Path | PoolStore"):
        if isinstance(source, (str, Path)):
            self._conn = schema.connect(source)
            self._lock = threading.RLock()
            self._owns_conn = True
        else:
            self._conn = source._conn
            self._lock = source._lock
            self._owns_conn = False

    def close(self) -> None:
        if self._owns_conn:
            with self._lock:
                self._conn.close()

    def __enter__(self) -> "TrustStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- queries -----------------------------------------------------------------------

    def status(self, key: str) -> str:
        """"own", "pinned", "blocked" or "unknown"."""
        row = self._one("SELECT status FROM trust WHERE key = ?", (normalise_key(key),))
        return "unknown" if row is None else row[0]

    def weight(self, key: str) -> float:
        """1.0 for own and pinned keys, 0.0 for blocked ones, `unknown_weight` otherwise."""
        status = self.status(key)
        if status in ("own", "pinned"):
            return 1.0
        if status == "blocked":
            return 0.0
        return self.unknown_weight

    def entries(self) -> list[TrustEntry]:
        """Every own, pinned and blocked key: own first, then pinned, then blocked, oldest first."""
        rows = self._all(
            "SELECT key, status, label, since_ms FROM trust ORDER BY"
            " CASE status WHEN 'own' THEN 0 WHEN 'pinned' THEN 1 ELSE 2 END, since_ms, key"
        )
        return [TrustEntry(*row) for row in rows]

    def entry(self, key: str) -> TrustEntry | None:
        row = self._one("SELECT key, status, label, since_ms FROM trust WHERE key = ?", (normalise_key(key),))
        return None if row is None else TrustEntry(*row)

    def labels(self) -> dict[str, str]:
        """key -> label of every entry that has a label."""
        return {k: label for k, label in self._all("SELECT key, label FROM trust WHERE label != ''")}

    def find_label(self, label: str) -> list[str]:
        """Keys whose label is exactly `label`."""
        return [r[0] for r in self._all("SELECT key FROM trust WHERE label = ? ORDER BY key", (label,))]

    @property
    def own_key(self) -> str | None:
        row = self._one("SELECT key FROM trust WHERE status = 'own'")
        return None if row is None else row[0]

    @property
    def unknown_weight(self) -> float:
        row = self._one("SELECT value FROM settings WHERE name = 'unknown_weight'")
        return DEFAULT_UNKNOWN_WEIGHT if row is None else float(row[0])

    @unknown_weight.setter
    def unknown_weight(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value < 1:
            raise TrustError(f"the weight of unknown keys must be strictly between 0 and 1, got {value!r}")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO settings (name, value) VALUES ('unknown_weight', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (repr(float(value)),),
            )

    # --- changes (each returns the status the key had before) ---------------------------

    def set_own(self, key: str) -> str:
        """Make `key` this node's own key; a previous own key becomes pinned."""
        key = normalise_key(key)
        with self._write() as conn:
            before = _status(conn, key)
            conn.execute("UPDATE trust SET status = 'pinned', label = 'previous own key' WHERE status = 'own' AND key != ?", (key,))
            _put(conn, key, "own", "this node")
        return before

    def pin(self, key: str, label: str = "") -> str:
        """Count `key` fully. Re-pinning changes the label. Refused for the own or a blocked key."""
        key, label = normalise_key(key), _label(label)
        with self._write() as conn:
            before = _status(conn, key)
            if before == "own":
                raise TrustError(f"{_short(key)} is this node's own key; it already counts fully")
            if before == "blocked":
                raise TrustError(f"{_short(key)} is blocked; run `p2pgolf trust unblock` first, then pin it")
            _put(conn, key, "pinned", label)
        return before

    def unpin(self, key: str) -> str:
        """Return a pinned key to unknown."""
        return self._forget(key, "pinned")

    def block(self, key: str, label: str = "") -> str:
        """Ignore `key` (weight 0). Overrides a pin; an empty label keeps the existing one."""
        key, label = normalise_key(key), _label(label)
        with self._write() as conn:
            before = _status(conn, key)
            if before == "own":
                raise TrustError(f"{_short(key)} is this node's own key; it cannot be blocked")
            if not label:
                row = conn.execute("SELECT label FROM trust WHERE key = ?", (key,)).fetchone()
                label = row[0] if row else ""
            _put(conn, key, "blocked", label)
        return before

    def unblock(self, key: str) -> str:
        """Return a blocked key to unknown (not to pinned: pin it again if you trust it)."""
        return self._forget(key, "blocked")

    def _forget(self, key: str, expected: str) -> str:
        """Return a key in status `expected` to unknown; TrustError if it is in another."""
        key = normalise_key(key)
        with self._write() as conn:
            before = _status(conn, key)
            if before != expected:
                raise TrustError(f"{_short(key)} is not {expected} (it is {before})")
            conn.execute("DELETE FROM trust WHERE key = ?", (key,))
        return before

    # --- helpers -----------------------------------------------------------------------

    def _one(self, sql: str, params: tuple = ()) -> tuple | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _write(self):
        return _Transaction(self._conn, self._lock)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the lock; ROLLBACK if the block raises."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock):
        self._conn, self._lock = conn, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
            elif self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        finally:
            self._lock.release()


def _status(conn: sqlite3.Connection, key: str) -> str:
    row = conn.execute("SELECT status FROM trust WHERE key = ?", (key,)).fetchone()
    return "unknown" if row is None else row[0]


def _put(conn: sqlite3.Connection, key: str, status: str, label: str) -> None:
    # since_ms changes only when the status does; relabelling keeps it.
    conn.execute(
        "INSERT INTO trust (key, status, label, since_ms) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET label = excluded.label,"
        " since_ms = CASE WHEN trust.status = excluded.status THEN trust.since_ms ELSE excluded.since_ms END,"
        " status = excluded.status",
        (key, status, label, int(time.time() * 1000)),
    )


def _label(label: str) -> str:
    if not isinstance(label, str):
        raise TrustError(f"a label must be text, got {type(label).__name__}")
    label = label.strip()
    if len(label) > MAX_LABEL_CHARS:
        raise TrustError(f"label is {len(label)} characters; at most {MAX_LABEL_CHARS}")
    if _CONTROL.search(label):
        raise TrustError("label must not contain control characters")
    return label


def _short(key: str) -> str:
    return f"{key[:12]}..."

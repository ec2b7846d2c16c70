"""The pool database's schema: connection settings and ordered migrations.

`connect(path)` opens (creating if needed) the SQLite file that holds the pool and the trust
store, with WAL journalling, a busy timeout and foreign keys, and brings its schema up to
`SCHEMA_VERSION` by applying the missing migrations in order, each in one transaction, so
any number of processes may open the same file at once. A file written by a newer p2pgolf
(a higher schema version) is refused with `SchemaVersionError` and left untouched.

Migrations are append-only: never edit one that has shipped; add the next.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

BUSY_TIMEOUT_MS = 30_000

# (version, what it adds, SQL). Applied in order; each version exactly once.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "records, lineage and sync buckets",
        """
        CREATE TABLE records (
            id          TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 64),
            kind        TEXT NOT NULL CHECK (kind IN ('result', 'attestation')),
            bench       TEXT NOT NULL,
            author      TEXT NOT NULL,
            created_ms  INTEGER NOT NULL,
            received_ms INTEGER NOT NULL,
            candidate   TEXT,
            subject     TEXT,
            val_bpb     REAL NOT NULL,
            raw         BLOB NOT NULL
        );
        CREATE INDEX records_by_bench_created ON records (bench, created_ms, id);
        CREATE INDEX records_by_author ON records (author, bench);
        CREATE INDEX records_by_candidate ON records (candidate);
        CREATE INDEX records_by_subject ON records (subject);
        CREATE INDEX records_by_created ON records (created_ms);
        CREATE INDEX records_by_received ON records (received_ms);
        CREATE INDEX records_by_bpb ON records (val_bpb);

        -- A parent may be absent from the pool, so only the child is a foreign key.
        CREATE TABLE parents (
            child  TEXT NOT NULL REFERENCES records (id),
            parent TEXT NOT NULL,
            PRIMARY KEY (child, parent)
        ) WITHOUT ROWID;
        CREATE INDEX parents_by_parent ON parents (parent, child);

        -- Per bench and hour: how many records, and the sync digest (NULL = recompute).
        CREATE TABLE buckets (
            bench    TEXT NOT NULL,
            start_ms INTEGER NOT NULL,
            count    INTEGER NOT NULL,
            digest   TEXT,
            PRIMARY KEY (bench, start_ms)
        ) WITHOUT ROWID;
        """,
    ),
    (
        2,
        "trust store and settings",
        """
        CREATE TABLE trust (
            key      TEXT PRIMARY KEY NOT NULL CHECK (length(key) = 64),
            status   TEXT NOT NULL CHECK (status IN ('own', 'pinned', 'blocked')),
            label    TEXT NOT NULL DEFAULT '',
            since_ms INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE settings (
            name  TEXT PRIMARY KEY NOT NULL,
            value TEXT NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
)

SCHEMA_VERSION: int = MIGRATIONS[-1][0]


class SchemaVersionError(RuntimeError):
    """The database was written by a newer p2pgolf; this one must not touch it."""


def connect(path: str | Path) -> sqlite3.Connection:
    """An open, migrated connection to the pool file at `path` (parent directories created).

    The connection is in autocommit mode: callers open transactions with BEGIN IMMEDIATE so a
    writer takes the write lock before reading, and two writers never deadlock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot switch to WAL journalling (got {mode})")
        # In WAL mode NORMAL survives any process crash; callers raise it to FULL for commits
        # that must also survive a power cut (our own records).
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def current_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the file; 0 for an empty file."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: sqlite3.Connection, path: str | Path = "pool") -> int:
    """Apply the missing migrations in order; return the version now in the file."""
    if _check_version(conn, path) == SCHEMA_VERSION:
        return SCHEMA_VERSION  # the common case: no write lock taken
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_version(conn, path)  # another process may have migrated meanwhile
        if version == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL, what TEXT NOT NULL)")
        for number, what, sql in MIGRATIONS:
            if number > version:
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_ms, what) VALUES (?, ?, ?)",
                    (number, int(time.time() * 1000), what),
                )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION


def _check_version(conn: sqlite3.Connection, path: str | Path) -> int:
    version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has pool schema version {version}, but this p2pgolf understands at most "
            f"{SCHEMA_VERSION}; upgrade p2pgolf (the file was left untouched)"
        )
    return version


def _statements(sql: str) -> list[str]:
    # executescript would COMMIT our transaction, so statements run one by one inside it.
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]

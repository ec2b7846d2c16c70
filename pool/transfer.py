"""Export the pool to a file and import records from one, in two formats.

- msgpack (.msgpack, .mpk): a stream of msgpack `bin` items, each the exact envelope bytes
  of one record, so a reader splits the stream without knowing the record format.
- JSON lines (.jsonl, .json), for people: one `{"id": hex, "sig": hex, "record": {...}}` per
  line, where `record` is the record body as JSON. Python's json writes floats with repr,
  so they read back to the same float64 and the body re-encodes to the signed bytes.

Import verifies every record exactly as if a peer had sent it (a JSON line is re-encoded
canonically, wrapped with its signature and passed to `decode_record`; then its id must
match), passes them through the same storage checks as records from peers
(pool/admission.StorageGate: blocked keys, duplicates, the per-key cap and the quota for unknown
keys), stores the good ones in batches of IMPORT_BATCH and reports each reject with its line or
item number (1-based), in file order.
A corrupt or hostile file never removes or changes anything already stored. Export writes
a temporary file and renames it into place, so a failed export leaves no half file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgpack

from p2pgolf.protocol import canonical
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.signing import MAX_RECORD_BYTES, SignedRecord, decode_record

from p2pgolf.pool.admission import DEFAULT_UNKNOWN_KEY_CAP, DEFAULT_UNKNOWN_QUOTA_BYTES, StorageGate, Verdict
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore

FORMATS = ("jsonl", "msgpack")
EXTENSIONS = {".jsonl": "jsonl", ".json": "jsonl", ".msgpack": "msgpack", ".mpk": "msgpack"}
IMPORT_BATCH = 1000  # records per transaction: bounded memory, and good batches survive a bad one
MAX_LINE_BYTES = 4 * MAX_RECORD_BYTES  # a JSON line is hex and escapes around at most 16 KiB


class TransferError(ValueError):
    """The file cannot be read or written at all (missing, unknown format, exists)."""


@dataclass
class ImportReport:
    """What an import did. `rejected` holds (line or item number, 1-based, reason)."""

    format: str
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)

    @property
    def unit(self) -> str:
        return "line" if self.format == "jsonl" else "item"


def detect_format(path: Path, explicit: str | None = None) -> str:
    """The format named, else the one the extension implies, else the one the first byte implies."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise TransferError(f"unknown format {explicit!r}; expected one of {', '.join(FORMATS)}")
        return explicit
    by_ext = EXTENSIONS.get(path.suffix.lower())
    if by_ext:
        return by_ext
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        head = b""
    if head[:1] == b"{":
        return "jsonl"
    if head[:1] in (b"\xc4", b"\xc5", b"\xc6"):
        return "msgpack"
    raise TransferError(
        f"cannot tell the format of {path}: use a .jsonl or .msgpack name, or --format jsonl|msgpack"
    )


def export_records(store: PoolStore, path: str | Path, *, format: str | None = None, bench: str | None = None, overwrite: bool = False) -> int:
    """Write every record (of `bench`) to `path`, oldest first. Returns how many."""
    path = Path(path)
    fmt = detect_format(path, format) if format or path.suffix.lower() in EXTENSIONS else "jsonl"
    if path.exists() and not overwrite:
        raise TransferError(f"{path} already exists; choose another name or pass --force")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with open(tmp, "wb") as out:
            for id_, raw in store.iter_raw(bench=bench):
                out.write(_msgpack_item(raw) if fmt == "msgpack" else _json_line(id_, raw))
                count += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def import_records(
    store: PoolStore, path: str | Path, *, format: str | None = None, now_ms: int | None = None,
    unknown_key_cap: int = DEFAULT_UNKNOWN_KEY_CAP, unknown_quota_bytes: int = DEFAULT_UNKNOWN_QUOTA_BYTES,
) -> ImportReport:
    """Verify and store every record in `path`; report each reject. Never raises for bad records."""
    path = Path(path)
    if not path.is_file():
        raise TransferError(f"no such file: {path}")
    fmt = detect_format(path, format)
    report = ImportReport(format=fmt)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    items = _read_jsonl(path, now_ms) if fmt == "jsonl" else _read_msgpack(path, now_ms)
    pending: list[tuple[int, SignedRecord]] = []
    trust = TrustStore(store)
    gate = StorageGate(store, trust, None, own_key=trust.own_key)

    def flush() -> None:
        verdicts, added = gate.admit([rec for _, rec in pending], unknown_key_cap=unknown_key_cap, unknown_quota_bytes=unknown_quota_bytes)
        report.added.extend(added)
        for (number, rec), verdict in zip(pending, verdicts):
            if verdict is Verdict.DUPLICATE:
                report.duplicates.append(rec.id)
            elif not verdict.accepted:
                report.rejected.append((number, f"refused: {verdict.value} (record {rec.id[:12]} by {rec.author[:12]})"))
        report.rejected.sort()
        pending.clear()

    for number, rec, error in items:
        if error is not None:
            report.rejected.append((number, error))
            continue
        pending.append((number, rec))
        if len(pending) >= IMPORT_BATCH:
            flush()
    if pending:
        flush()
    return report


def decode_json_line(line: str | bytes, *, now_ms: int | None = None) -> SignedRecord:
    """The verified record of one JSON line: its body re-encoded canonically and wrapped with
    its signature goes through `decode_record`, then the line's id must match. Raises only
    ProtocolError."""
    try:
        item = json.loads(line, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except ProtocolError:
        raise
    except RecursionError:
        # json's scanner recurses once per `[` or `{`; a record nests at most MAX_DEPTH levels.
        raise ProtocolError(f"JSON nested too deeply (a record nests at most {canonical.MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not valid JSON ({exc})") from None
    if not isinstance(item, dict) or set(item) != {"id", "sig", "record"}:
        raise ProtocolError('each line must be an object with exactly the fields "id", "sig" and "record"')
    id_, sig, record = item["id"], item["sig"], item["record"]
    if not isinstance(record, dict):
        raise ProtocolError("must be an object (the record body)", "record")
    try:
        signature = bytes.fromhex(sig) if isinstance(sig, str) else None
    except ValueError:
        signature = None
    if signature is None or len(signature) != 64:
        raise ProtocolError("must be 128 hex characters (an Ed25519 signature)", "sig")
    body = canonical.encode(record)
    envelope = canonical.encode({"body": body, "sig": signature})
    rec = decode_record(envelope, now_ms=now_ms)
    if id_ != rec.id:
        raise ProtocolError(f"does not match the record (its id is {rec.id})", "id")
    return rec


# --- helpers ---------------------------------------------------------------------------


def _msgpack_item(raw: bytes) -> bytes:
    return msgpack.packb(raw, use_bin_type=True)


def _json_line(id_: str, raw: bytes) -> bytes:
    envelope = canonical.decode(raw, max_len=MAX_RECORD_BYTES)
    body = canonical.decode(envelope["body"], max_len=MAX_RECORD_BYTES)
    line = json.dumps({"id": id_, "sig": envelope["sig"].hex(), "record": body}, sort_keys=True, allow_nan=False)
    return line.encode() + b"\n"


def _read_jsonl(path: Path, now_ms: int) -> Iterator[tuple[int, SignedRecord | None, str | None]]:
    with open(path, "rb") as f:
        for number, line, length in _bounded_lines(f, MAX_LINE_BYTES):
            if line is None:
                yield number, None, f"line is {length} bytes; a record's line is at most {MAX_LINE_BYTES}"
                continue
            if not line.strip():
                continue  # blank lines (a trailing newline, hand edits) are not records
            try:
                yield number, decode_json_line(line, now_ms=now_ms), None
            except ProtocolError as exc:
                yield number, None, str(exc)


def _bounded_lines(f: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line, its length in bytes) for each line of `f`, newline included. A line
    longer than `limit` comes as None: it is skipped in chunks, never held whole in memory."""
    number = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        number += 1
        if len(line) <= limit:
            yield number, line, len(line)
            continue
        length = len(line)
        while not line.endswith(b"\n"):
            line = f.readline(1 << 16)
            if not line:
                break
            length += len(line)
        yield number, None, length


def _read_msgpack(path: Path, now_ms: int) -> Iterator[tuple[int, SignedRecord | None, str | None]]:
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(
            f,
            raw=False,
            max_buffer_size=4 * MAX_RECORD_BYTES,
            max_bin_len=MAX_RECORD_BYTES,
            max_str_len=MAX_RECORD_BYTES,
            max_array_len=1024,
            max_map_len=1024,
            max_ext_len=0,
        )
        number = 0
        while True:
            number += 1
            try:
                item = unpacker.unpack()
            except msgpack.OutOfData:
                if unpacker.tell() < f.seek(0, os.SEEK_END):
                    yield number, None, f"file ends in the middle of an item (at byte {unpacker.tell()})"
                return
            except Exception as exc:  # msgpack raises several types for malformed input
                # After a malformed item the stream cannot be re-split; stop here.
                yield number, None, f"malformed msgpack at byte {unpacker.tell()} ({type(exc).__name__}: {exc}); the rest of the file was not read"
                return
            if type(item) is not bytes:
                yield number, None, f"item must be a msgpack bin holding one envelope, got {type(item).__name__}"
                continue
            try:
                yield number, decode_record(item, now_ms=now_ms), None
            except ProtocolError as exc:
                yield number, None, str(exc)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ProtocolError(f"JSON object has the key {dup!r} twice")
    return out


def _no_constant(name: str) -> None:
    raise ProtocolError(f"{name} is not allowed in a record")

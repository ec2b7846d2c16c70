"""`p2pgolf pool ...`: inspect, import and export the local pool of records.

Every subcommand opens the pool file of the node's home and refuses, in one line, when the
home has not been initialised (it never creates a pool somewhere by accident). `--json`
prints exactly one JSON document on stdout. `explain` and `top` are listed here but live in
node/commands/pool_search_cmd.py, loaded only when used.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from p2pgolf.node.cli import LazyGroup, UserError
from p2pgolf.node.home import Home

if TYPE_CHECKING:
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol.signing import SignedRecord

MIN_PREFIX = 6

SUMMARIES = {
    "ls": "List records, newest first.",
    "show": "Show one record in full (id or unique prefix).",
    "lineage": "Show a record's ancestors and descendants as a tree.",
    "import": "Verify and add records from a .jsonl or .msgpack file.",
    "export": "Write records to a .jsonl or .msgpack file.",
    "stats": "Count records per bench, kind and author; database size; quota use.",
    "explain": "Explain the estimate for a candidate.",
    "top": "Show the best candidates by estimate.",
    "import-record": "Import competition record folders as results.",
    "fetch": "Get a record's artifact from whichever peers have it.",
    "failed": "List the candidates that failed on this node.",
    "retry": "Let the research loop choose a failed candidate again.",
}


# --- helpers other commands use ------------------------------------------------------------


def open_pool(home: Home) -> "PoolStore":
    """The home's pool, or a one-line UserError if the home is not initialised or unusable."""
    from p2pgolf.pool.schema import SchemaVersionError
    from p2pgolf.pool.store import PoolStore

    if not home.pool_db.exists():
        raise UserError(f"{home.root} is not initialised (no pool); run `p2pgolf init` first")
    try:
        return PoolStore(home.pool_db)
    except SchemaVersionError as exc:
        raise UserError(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{home.pool_db} is not a usable pool database ({exc})") from None


def open_trust(store: "PoolStore") -> "TrustStore":
    from p2pgolf.pool.trust import TrustStore

    return TrustStore(store)


def resolve_key(trust: "TrustStore", text: str) -> str:
    """A hex key, a peer id, or the label of exactly one trust entry -> hex key."""
    from p2pgolf.pool.trust import TrustError, normalise_key

    try:
        return normalise_key(text)
    except TrustError as exc:
        matches = trust.find_label(text)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"the label {text!r} names {len(matches)} keys; give the key instead") from None
        raise UserError(f"{exc} (nor is it a label in the trust list)") from None


def resolve_bench(text: str) -> str:
    """A benchmark name (smoke, smoke@30s, parameter-golf/sp1024-10min) or 64-hex id -> id."""
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.protocol.errors import ProtocolError

    lowered = text.strip().lower()
    if len(lowered) == 64 and all(c in "0123456789abcdef" for c in lowered):
        return lowered
    try:
        return benchmark(text.strip()).id
    except ProtocolError as exc:
        raise UserError(f"--bench: {exc}") from None


def resolve_record_id(store: "PoolStore", text: str) -> str:
    """A full record id or a unique prefix of at least MIN_PREFIX hex characters -> id. A
    candidate id given instead is named as one (with the command that takes it)."""
    prefix = _hex_prefix(text, "record id")
    if not store.complete_id(prefix, limit=1) and store.complete_candidate(prefix, limit=1):
        raise UserError(f"{prefix} is a candidate id, not a record id; list its records with `p2pgolf pool ls --candidate {prefix}`")
    return _unique(store.complete_id, prefix, "no record in the pool has an id", "record ids")


def _unique(complete, prefix: str, none: str, plural: str) -> str:
    """The one completion of `prefix`, or a one-line error saying there is none or several."""
    found = complete(prefix, limit=2)
    if not found:
        raise UserError(f"{none} starting with {prefix}")
    if len(found) > 1:
        raise UserError(f"{prefix} is the start of several {plural}; give more characters")
    return found[0]


def bench_label(bench_id: str) -> str:
    from p2pgolf.protocol.benchmarks import by_id

    known = by_id(bench_id)
    return known.name if known else f"{bench_id[:12]}..."


# --- the command group -----------------------------------------------------------------------


@click.group(
    "pool",
    cls=LazyGroup,
    lazy={
        "explain": "p2pgolf.node.commands.pool_search_cmd:explain",
        "top": "p2pgolf.node.commands.pool_search_cmd:top",
        "import-record": "p2pgolf.node.commands.import_record_cmd:import_record",
        "fetch": "p2pgolf.node.commands.verify_cmd:fetch",
        "failed": "p2pgolf.node.commands.pool_failures_cmd:failed",
        "retry": "p2pgolf.node.commands.pool_failures_cmd:retry",
    },
    summaries=SUMMARIES,
)
def pool() -> None:
    """Inspect, import and export the local pool of records."""


@pool.command("ls")
@click.option("--bench", help="Benchmark name (e.g. smoke, smoke@30s) or id.")
@click.option("--author", help="Author key, peer id or trust label.")
@click.option("--candidate", help="Candidate id or a unique prefix of it.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="At most this many (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_obj
def ls(home: Home, bench: str | None, author: str | None, candidate: str | None, limit: int, as_json: bool) -> None:
    """List records, newest first."""
    with open_pool(home) as store:
        trust = open_trust(store)
        bench_id = resolve_bench(bench) if bench else None
        author_key = resolve_key(trust, author) if author else None
        candidate_id = _resolve_candidate(store, candidate) if candidate else None
        records = store.query(bench=bench_id, author=author_key, candidate=candidate_id, limit=limit or None, order="-created")
        total = store.count(bench=bench_id, author=author_key) if candidate_id is None else None
        if as_json:
            click.echo(json.dumps([_record_json(r, trust) for r in records]))
            return
        _print_table(records, trust, total)


@pool.command("show")
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def show(home: Home, record_id: str, as_json: bool) -> None:
    """Show one record in full (id or unique prefix of at least 6 hex characters)."""
    with open_pool(home) as store:
        trust = open_trust(store)
        rec = store.get(resolve_record_id(store, record_id))
        attestations = store.query(subject=rec.id, kind="attestation")
        held = _artifact_held(home, rec)
        if as_json:
            doc = _record_json(rec, trust)
            doc["sig"] = rec.signature.hex()
            doc["attestations"] = [a.id for a in attestations]
            doc["artifact_held"] = held
            click.echo(json.dumps(doc))
            return
        _print_record(rec, trust, attestations, store, held)


@pool.command("lineage")
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def lineage(home: Home, record_id: str, as_json: bool) -> None:
    """Show a record's ancestors and descendants as a tree."""
    with open_pool(home) as store:
        trust = open_trust(store)
        info = store.lineage(resolve_record_id(store, record_id))
        if as_json:
            click.echo(json.dumps({
                "id": info.id,
                "ancestors": [r.id for r in info.ancestors],
                "descendants": [r.id for r in info.descendants],
                "missing": info.missing,
            }))
            return
        _print_lineage(info, trust)


@pool.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "msgpack"]), help="Default: from the file name or its first byte.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def import_(home: Home, file: Path, fmt: str | None, as_json: bool) -> None:
    """Verify and add records from a .jsonl or .msgpack file; report every reject.

    Into a new home it creates the data directory and the pool first (no identity: `init` or
    `join` makes that when it is needed)."""
    from p2pgolf.node.config import load_config
    from p2pgolf.pool.transfer import TransferError, import_records
    from p2pgolf.protocol.errors import ProtocolError

    if not file.is_file():
        raise UserError(f"{file}: no such file")
    if not home.pool_db.exists():
        from p2pgolf.pool.store import PoolStore

        home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        PoolStore(home.pool_db).close()
        click.echo(f"created the pool {home.pool_db} (no identity yet: `p2pgolf init` or `p2pgolf join` makes one)", err=as_json)
    try:
        limits = load_config(home).limits
    except ProtocolError as exc:
        raise UserError(str(exc)) from None
    with open_pool(home) as store:
        try:
            report = import_records(store, file, format=fmt, unknown_key_cap=limits.unknown_key_cap, unknown_quota_bytes=limits.unknown_quota_bytes)
        except TransferError as exc:
            raise UserError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({
            "file": str(file),
            "format": report.format,
            "added": len(report.added),
            "duplicates": len(report.duplicates),
            "rejected": [{report.unit: n, "reason": reason} for n, reason in report.rejected],
        }))
    else:
        for number, reason in report.rejected:
            click.echo(f"{file}: {report.unit} {number}: {reason}", err=True)
        click.echo(f"imported {len(report.added)} new, {len(report.duplicates)} already present, {len(report.rejected)} rejected ({file})")
    if report.rejected:
        raise UserError(f"{len(report.rejected)} record(s) rejected; the valid ones were stored")


@pool.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "msgpack"]), help="Default: from the file name (.jsonl, .msgpack), else jsonl.")
@click.option("--bench", help="Only this benchmark (name or id).")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@click.pass_obj
def export(home: Home, file: Path, fmt: str | None, bench: str | None, force: bool) -> None:
    """Write records (oldest first) to a .jsonl or .msgpack file."""
    from p2pgolf.pool.transfer import TransferError, export_records

    bench_id = resolve_bench(bench) if bench else None
    with open_pool(home) as store:
        try:
            n = export_records(store, file, format=fmt, bench=bench_id, overwrite=force)
        except TransferError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            raise UserError(f"cannot write {file}: {exc.strerror or exc}") from None
    click.echo(f"exported {n} records to {file}")


@pool.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def stats(home: Home, as_json: bool) -> None:
    """Count records per bench, kind and author; show the database size."""
    from p2pgolf.node.config import load_config
    from p2pgolf.protocol.errors import ProtocolError

    try:
        quota = load_config(home).limits.unknown_quota_bytes
    except ProtocolError as exc:
        raise UserError(str(exc)) from None
    with open_pool(home) as store:
        trust = open_trust(store)
        labels = trust.labels()
        unknown_bytes, unknown_records = store.untrusted_usage(trust.own_key)
        doc: dict[str, Any] = {
            "pool": str(home.pool_db),
            "records": store.count(),
            "db_bytes": sum(p.stat().st_size for p in _db_files(home.pool_db)),
            "schema_version": store.schema_version(),
            "unknown_keys": {"bytes": unknown_bytes, "records": unknown_records, "quota_bytes": quota},
            "benches": [{"bench": b, "name": bench_label(b), "records": n} for b, n in store.benches()],
            "kinds": {k: n for k, n in store.kinds()},
            "authors": [
                {"author": a, "label": labels.get(a, ""), "status": trust.status(a), "records": n} for a, n in store.authors()
            ],
        }
    if as_json:
        click.echo(json.dumps(doc))
        return
    from rich.table import Table

    from p2pgolf.node.views.plain_console import plain_console

    console = plain_console()
    console.print(f"{doc['records']} records in {doc['pool']} ({_size(doc['db_bytes'])}, schema v{doc['schema_version']})")
    unknown = doc["unknown_keys"]
    console.print(
        f"unknown keys: {_size(unknown['bytes'])} of the {_size(unknown['quota_bytes'])} quota ({unknown['bytes'] / unknown['quota_bytes']:.1%}, {unknown['records']} records)",
        markup=False,
    )
    for title, rows, head in (
        ("by bench", [(b["name"], b["records"]) for b in doc["benches"]], "bench"),
        ("by kind", list(doc["kinds"].items()), "kind"),
        ("by author", [(_who(a["author"], a["label"], a["status"]), a["records"]) for a in doc["authors"]], "author"),
    ):
        table = Table(title=title, title_justify="left")
        table.add_column(head)
        table.add_column("records", justify="right")
        for name, n in rows:
            table.add_row(str(name), str(n))
        console.print(table)


# --- rendering -------------------------------------------------------------------------------


def _record_json(rec: "SignedRecord", trust: "TrustStore") -> dict[str, Any]:
    import msgpack

    doc: dict[str, Any] = {
        "id": rec.id,
        "kind": rec.kind,
        "bench": rec.bench,
        "author": rec.author,
        "author_status": trust.status(rec.author),
        "created_ms": rec.created_ms,
    }
    if rec.kind == "result":
        doc["candidate"] = rec.record.candidate
    doc["record"] = msgpack.unpackb(rec.body, raw=False)
    return doc


def _print_table(records: list["SignedRecord"], trust: "TrustStore", total: int | None) -> None:
    """Record ids and candidate ids side by side (named so they are not confused); a borderless
    table in which only the config column wraps and long names are cut with an ellipsis, so
    every column fits an 80-column terminal."""
    from rich.table import Table

    from p2pgolf.node.views.plain_console import plain_console

    labels, now = trust.labels(), time.time() * 1000
    statuses: dict[str, str] = {}
    title = f"{len(records)} of {total} records" if total is not None else f"{len(records)} records"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("record", no_wrap=True)
    table.add_column("author", no_wrap=True, overflow="ellipsis", max_width=10)
    table.add_column("candidate", no_wrap=True, max_width=9)
    table.add_column("config", overflow="fold", min_width=12, ratio=1)
    table.add_column("hw", no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("val_bpb", justify="right", no_wrap=True)
    table.add_column("age", justify="right", no_wrap=True)
    for rec in records:
        status = statuses.setdefault(rec.author, trust.status(rec.author))
        r = rec.record
        if rec.kind == "result":
            candidate, config = r.candidate[:9], f"{r.base} {_diff_summary(r.diff)}"
        else:
            candidate, config = "", f"attests {r.subject[:9]} ({r.method})"
        table.add_row(
            rec.id[:10], _who(rec.author, labels.get(rec.author, ""), status), candidate, config, r.hw.key,
            f"{r.metrics.val_bpb:.4f}", _age(now - rec.created_ms),
        )
    plain_console().print(table)


def _artifact_held(home: Home, rec: "SignedRecord") -> bool | None:
    """Whether the record's artifact is in this home's blob store (None: it names none)."""
    from p2pgolf.pool.blobs import BlobStore

    sha = rec.record.artifact
    return None if not sha else BlobStore(home.blobs_dir).has(sha)


def _print_record(rec: "SignedRecord", trust: "TrustStore", attestations: list["SignedRecord"], store: "PoolStore", held: bool | None = None) -> None:
    from rich.table import Table

    from p2pgolf.node.views.plain_console import plain_console

    r = rec.record
    entry = trust.entry(rec.author)
    table = Table(show_header=False, title=f"{rec.kind} {rec.id}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("bench", f"{bench_label(rec.bench)} ({rec.bench})")
    table.add_row("author", f"{_who(rec.author, entry.label if entry else '', trust.status(rec.author))} {rec.author}")
    table.add_row("created", f"{_iso(rec.created_ms)} ({_age(time.time() * 1000 - rec.created_ms)} ago)")
    if rec.kind == "result":
        table.add_row("base", r.base)
        table.add_row("diff", "\n".join(f"{k} = {v!r}" for k, v in r.diff.items()) or "(none: the base as is)")
        table.add_row("candidate", r.candidate)
        table.add_row("parents", "\n".join(p + ("" if store.has(p) else " (not in pool)") for p in r.parents) or "(none)")
        table.add_row("budget_s", f"{r.budget_s:g}")
    else:
        table.add_row("subject", r.subject + ("" if store.has(r.subject) else " (not in pool)"))
        table.add_row("method", r.method)
    table.add_row("hw", f"{r.hw.key} ({r.hw.memory_mib} MiB)")
    table.add_row("seed", str(r.seed))
    for name, value in r.metrics.to_wire().items():
        table.add_row(name, repr(value) if isinstance(value, float) else str(value))
    if r.artifact:
        table.add_row("artifact", r.artifact + (" (held here)" if held else " (not held here; `p2pgolf pool fetch` gets it)"))
    else:
        table.add_row("artifact", "(none)")
    table.add_row("trainer", r.trainer or "(unknown)")
    if r.note:
        table.add_row("note", r.note)
    table.add_row("signature", rec.signature.hex())
    if attestations:
        table.add_row("attested by", "\n".join(f"{a.id[:12]} {a.record.method} val_bpb={a.record.metrics.val_bpb:.4f} by {a.author[:12]}" for a in attestations))
    plain_console().print(table)


def _print_lineage(info, trust: "TrustStore") -> None:
    from rich.tree import Tree

    from p2pgolf.node.views.plain_console import plain_console

    labels = trust.labels()
    by_id = {r.id: r for r in [*info.ancestors, *info.descendants]}
    if info.record is not None:
        by_id[info.id] = info.record
    children: dict[str, list[str]] = {}
    for r in info.descendants:
        for p in _parents(r):
            children.setdefault(p, []).append(r.id)

    def label(id_: str) -> str:
        rec = by_id.get(id_)
        if rec is None:
            return f"{id_[:12]} (not in pool)"
        r = rec.record
        what = f"{r.base} {_diff_summary(r.diff)}" if rec.kind == "result" else r.method
        return f"{id_[:12]} val_bpb={r.metrics.val_bpb:.4f} {what} by {_who(rec.author, labels.get(rec.author, ''), trust.status(rec.author))}"

    def grow(node: Tree, id_: str, links, seen: set[str]) -> None:
        for nxt in links(id_):
            if nxt in seen:
                node.add(f"{nxt[:12]} (shown above)")
                continue
            seen.add(nxt)
            grow(node.add(label(nxt)), nxt, links, seen)

    root = Tree(label(info.id))
    up = root.add(f"ancestors ({len(info.ancestors)} in pool, {len(info.missing)} missing)")
    grow(up, info.id, lambda i: _parents(by_id.get(i)), {info.id})
    down = root.add(f"descendants ({len(info.descendants)})")
    grow(down, info.id, lambda i: children.get(i, []), {info.id})
    plain_console().print(root)


def _parents(rec: "SignedRecord | None") -> tuple[str, ...]:
    return rec.record.parents if rec is not None and rec.kind == "result" else ()


def _resolve_candidate(store: "PoolStore", text: str) -> str:
    """A candidate id or unique prefix -> id. A record id given instead is named as one, with
    the candidate it measured."""
    prefix = _hex_prefix(text, "candidate id")
    if not store.complete_candidate(prefix, limit=1):
        records = store.complete_id(prefix, limit=2)
        if len(records) == 1:
            rec = store.get(records[0])
            if rec.kind == "result":
                raise UserError(f"{prefix} is a record id, not a candidate id; that record measured candidate {rec.record.candidate[:12]}")
            raise UserError(f"{prefix} is the id of an attestation record, not a candidate id; it attests record {rec.record.subject[:12]}")
    return _unique(store.complete_candidate, prefix, "no result in the pool has a candidate id", "candidate ids")


def _hex_prefix(text: str, what: str) -> str:
    prefix = text.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix) or len(prefix) > 64:
        raise UserError(f"{text!r} is not a {what}: expected hex characters")
    if len(prefix) < MIN_PREFIX:
        raise UserError(f"{what} prefix {prefix!r} is too short; give at least {MIN_PREFIX} hex characters")
    return prefix


def _diff_summary(diff: dict, shown: int = 3) -> str:
    if not diff:
        return "(base)"
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(diff.items())[:shown]]
    if len(diff) > shown:
        parts.append(f"+{len(diff) - shown} more")
    return " ".join(parts)


def _who(key: str, label: str, status: str) -> str:
    name = "me" if status == "own" else (label or key[:8])
    return f"{name} (blocked)" if status == "blocked" else (f"{name} *" if status == "pinned" else name)


def _age(ms: float) -> str:
    s = max(0.0, ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s / size:.0f}{unit}"
    return f"{s:.0f}s"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _db_files(path: Path) -> list[Path]:
    return [p for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")) if p.exists()]

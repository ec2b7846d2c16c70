"""`p2pgolf script ...`: add, approve, list, show and revoke training scripts.

SHA is a script's SHA-256 or a unique prefix of it. Approval is per exact digest and is the only
thing that lets the research loop train a script on this node.
"""

from __future__ import annotations

import json

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.home import Home


def _store(home: Home):
    from p2pgolf.node.scripts import ScriptStore

    return ScriptStore(home)


def _guard(fn):
    """Store and parse errors become one line."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from p2pgolf.node.scripts import ScriptStoreError

        try:
            return fn(*args, **kwargs)
        except ScriptStoreError as exc:
            raise UserError(str(exc)) from None

    return wrapper


@click.group("script")
def script() -> None:
    """Add, approve, list, show and revoke training scripts."""


@script.command("add")
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@_guard
def add(home: Home, path: str, as_json: bool) -> None:
    """Store the script at PATH (a file, or a record folder's train_gpt.py) and show its hyperparameters.
    It does not run until you `p2pgolf script approve` it."""
    entry, vocab = _store(home).add_path(path)
    if as_json:
        click.echo(json.dumps({**_entry_json(entry), "hyperparameters": _vocab_json(vocab), "problems": list(vocab.problems)}))
        return
    click.echo(f"added script {entry.sha} ({entry.name}){'; approved' if entry.approved else '; not approved: it will not run'}")
    _print_vocab(vocab)
    if not entry.approved:
        click.echo(f"read the script, then run it on this node with: p2pgolf script approve {entry.sha[:12]}")


@script.command("approve")
@click.argument("sha")
@click.option("--tokenizer", default=None, help="Data variant the script trains on here (sp1024, sp4096, sp8192; default: the benchmark's).")
@click.pass_obj
@_guard
def approve(home: Home, sha: str, tokenizer: str | None) -> None:
    """Let the research loop train the script SHA (this exact digest) on this node."""
    store = _store(home)
    entry = store.approve(sha, tokenizer=tokenizer)
    chosen = store.tokenizer(entry.sha)
    click.echo(f"approved script {entry.sha} ({entry.name}){f' on {chosen}' if chosen else ''}")


@script.command("revoke")
@click.argument("sha")
@click.pass_obj
@_guard
def revoke(home: Home, sha: str) -> None:
    """Stop running the script SHA here (its records remain evidence)."""
    entry = _store(home).revoke(sha)
    click.echo(f"revoked script {entry.sha} ({entry.name}): it will not run on this node")


@script.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
@_guard
def ls(home: Home, as_json: bool) -> None:
    """List the scripts this node holds and whether each is approved."""
    entries = _store(home).entries()
    if as_json:
        click.echo(json.dumps([_entry_json(e) for e in entries]))
        return
    if not entries:
        click.echo("no scripts; add one with `p2pgolf script add PATH`")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="scripts", title_justify="left")
    for name in ("sha", "name", "approved", "origin", "from"):
        table.add_column(name, overflow="fold")
    for e in entries:
        table.add_row(e.sha[:16], e.name, "yes" if e.approved else "no", e.origin, e.source)
    Console(soft_wrap=True).print(table)


@script.command("show")
@click.argument("sha")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
@_guard
def show(home: Home, sha: str, as_json: bool) -> None:
    """Show the script SHA: where it came from, approval, and its hyperparameters."""
    store = _store(home)
    entry = store.entry(sha)
    vocab = store.vocabulary(entry.sha)
    if as_json:
        click.echo(json.dumps({**_entry_json(entry), "hyperparameters": _vocab_json(vocab), "problems": list(vocab.problems)}))
        return
    click.echo(f"script {entry.sha}\n  name: {entry.name}\n  {entry.origin} from: {entry.source}\n  approved: {'yes' if entry.approved else 'no'}")
    _print_vocab(vocab)


def _entry_json(e) -> dict:
    return {"sha": e.sha, "name": e.name, "approved": e.approved, "approved_ms": e.approved_ms, "origin": e.origin, "source": e.source, "added_ms": e.added_ms}


def _vocab_json(vocab) -> list[dict]:
    return [
        {"name": p.name, "type": p.type.__name__, "default": p.default, "low": p.low, "high": p.high, "searchable": p.searchable}
        for p in vocab.params.values()
    ]


def _print_vocab(vocab) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(vocab)} hyperparameters{' (self-extracting wrapper decoded)' if vocab.wrapped else ''}", title_justify="left")
    for name in ("name", "type", "default", "search range"):
        table.add_column(name, overflow="fold")
    for p in vocab.params.values():
        rng = "flip" if p.type is bool and p.searchable else f"[{p.low:g}, {p.high:g}]" if p.searchable else "-"
        table.add_row(p.name, p.type.__name__, "(unreadable)" if p.default is None else repr(p.default), rng)
    console = Console(soft_wrap=True)
    console.print(table)
    for problem in vocab.problems:
        console.print(f"note: {problem}", markup=False)

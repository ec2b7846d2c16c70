"""`p2pgolf pool failed` and `p2pgolf pool retry`: the candidates whose runs failed on this node.

The research loop remembers a candidate whose run failed here (pool/failures.py) and does not
choose it again on this hardware class; `failed` lists them with the reason, `retry CANDIDATE`
(a unique prefix will do) or `retry --all` lets the loop choose them again.
"""

from __future__ import annotations

import json

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.commands.pool_cmd import _hex_prefix, _iso, _unique, open_pool
from p2pgolf.node.home import Home


@click.command("failed")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_obj
def failed(home: Home, as_json: bool) -> None:
    """List the candidates that failed on this node and are not chosen again."""
    from p2pgolf.pool.failures import FailureMemory

    with open_pool(home) as store:
        rows = FailureMemory(store).failures()
    if as_json:
        click.echo(json.dumps([{"bench": f.bench, "hw": f.hw, "candidate": f.candidate, "status": f.status, "reason": f.reason, "failed_ms": f.failed_ms, "times": f.times} for f in rows]))
        return
    from rich.table import Table

    from p2pgolf.node.views.plain_console import plain_console

    if not rows:
        click.echo("no candidate has failed on this node")
        return
    table = Table(title="failed here (not chosen again; `p2pgolf pool retry CANDIDATE` lifts it)", title_justify="left")
    for head in ("candidate", "hardware", "status", "times", "last", "reason"):
        table.add_column(head)
    for f in rows:
        table.add_row(f.candidate[:12], f.hw, f.status, str(f.times), _iso(f.failed_ms), f.reason)
    plain_console().print(table)  # markup off: the reason and hardware are printed as written


@click.command("retry")
@click.argument("candidate", required=False)
@click.option("--all", "every", is_flag=True, help="Retry every failed candidate.")
@click.pass_obj
def retry(home: Home, candidate: str | None, every: bool) -> None:
    """Let the research loop choose a candidate that failed here again."""
    from p2pgolf.pool.failures import FailureMemory

    if every == (candidate is not None):
        raise UserError("give one CANDIDATE (id or unique prefix) or --all")
    with open_pool(home) as store:
        memory = FailureMemory(store)
        if every:
            n = memory.retry()
            click.echo(f"{n} failed candidate(s) will be chosen again")
            return
        prefix = _hex_prefix(candidate, "candidate id")
        full = _unique(memory.complete, prefix, "no failed candidate has an id", "failed candidates")
        memory.retry(full)
        click.echo(f"candidate {full[:12]} may be chosen again")

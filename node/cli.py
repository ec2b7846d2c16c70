"""The `p2pgolf` command line.

Every subcommand lives in its own module under `node/commands/` and is imported only when it
is invoked, so `p2pgolf pool ls` never pays for torch or libp2p. Errors a user can cause end
with one line on stderr and a non-zero exit code, never a stack trace.
"""

from __future__ import annotations

import importlib
import sys

import click

from node.home import HOME_ENV, resolve_home

# name -> "module:attribute", loaded lazily. Each room that adds a command adds a line here.
COMMANDS: dict[str, str] = {
    "init": "node.commands.identity_cmd:init",
    "id": "node.commands.identity_cmd:show_id",
    "trust": "node.commands.trust_cmd:trust",
    "pool": "node.commands.pool_cmd:pool",
    "train": "node.commands.train_cmd:train",
    "data": "node.commands.data_cmd:data",
    "join": "node.commands.join_cmd:join",
    "publish": "node.commands.publish_cmd:publish",
    "peers": "node.commands.status_cmd:peers",
    "status": "node.commands.status_cmd:status",
    "submission": "node.commands.submission_cmd:submission",
    "script": "node.commands.script_cmd:script",
    "verify": "node.commands.verify_cmd:verify",
}

# One-line summaries so `p2pgolf --help` lists commands without importing them.
SUMMARIES: dict[str, str] = {
    "init": "Create this node's identity key and data directory.",
    "id": "Print this node's peer id and public key.",
    "trust": "Pin, unpin, block and list peer keys.",
    "pool": "Inspect, import and export the local pool of records.",
    "train": "Train one candidate and write a run directory.",
    "data": "Fetch the challenge data or build shards from your own text.",
    "join": "Run a node: gossip, sync and (by default) the research loop.",
    "publish": "Sign a local result and deliver it to peers.",
    "peers": "List the peers of the running node.",
    "status": "Show the running node's status.",
    "submission": "Write a pool candidate as a competition record folder.",
    "script": "Add, approve, list, show and revoke training scripts.",
    "verify": "Re-evaluate a record's artifact and publish a signed attestation.",
}


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 1."""

    def show(self, file=None) -> None:  # one line, no "Usage:" banner
        click.echo(f"error: {self.format_message()}", err=True)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, summaries=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})
        self._summaries = dict(summaries or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            module_name, attr = self._lazy[name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith(module_name):
                    return None  # command not built yet
                raise
            return getattr(module, attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, self._summaries.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, summaries=SUMMARIES, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar=HOME_ENV,
    help=f"Data directory of this node (env {HOME_ENV}; default: the platform's user data dir).",
)
@click.version_option(package_name="p2pgolf")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """p2pgolf: train candidates, gossip signed results, search together."""
    ctx.obj = resolve_home(home)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one line and a non-zero exit code."""
    from protocol.errors import ProtocolError

    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of exiting.
        code = cli.main(args=argv, prog_name="p2pgolf", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ProtocolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()

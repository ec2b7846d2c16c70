"""The `p2pgolf` command line.

Every subcommand lives in its own module under `node/commands/` and is imported only when it
is invoked, so `p2pgolf pool ls` never pays for torch or libp2p. Errors a user can cause end
with one line on stderr and a non-zero exit code, never a stack trace.

Exit codes, the same for every command (README, "Exit codes"):
  0    done (for `join`: stopped as asked, by Ctrl-C, SIGTERM or `p2pgolf stop`)
  1    the command could not do what was asked (not found, not initialised, no peer reached, ...)
  2    the command line is wrong (unknown option or command, a malformed value)
  130  interrupted by Ctrl-C (any command but `join`, whose Ctrl-C is its normal stop)

Global options (`--home DIR`, `-v`) may come before or after the subcommand, as in git.
"""

from __future__ import annotations

import importlib
import sys

import click

from p2pgolf.node.home import HOME_ENV, resolve_home

# name -> "module:attribute", loaded lazily. Each room that adds a command adds a line here.
COMMANDS: dict[str, str] = {
    "init": "p2pgolf.node.commands.identity_cmd:init",
    "id": "p2pgolf.node.commands.identity_cmd:show_id",
    "trust": "p2pgolf.node.commands.trust_cmd:trust",
    "pool": "p2pgolf.node.commands.pool_cmd:pool",
    "train": "p2pgolf.node.commands.train_cmd:train",
    "data": "p2pgolf.node.commands.data_cmd:data",
    "join": "p2pgolf.node.commands.join_cmd:join",
    "publish": "p2pgolf.node.commands.publish_cmd:publish",
    "peers": "p2pgolf.node.commands.status_cmd:peers",
    "status": "p2pgolf.node.commands.status_cmd:status",
    "submission": "p2pgolf.node.commands.submission_cmd:submission",
    "script": "p2pgolf.node.commands.script_cmd:script",
    "verify": "p2pgolf.node.commands.verify_cmd:verify",
    "stop": "p2pgolf.node.commands.status_cmd:stop",
    "report": "p2pgolf.node.commands.report_cmd:report",
    "knobs": "p2pgolf.node.commands.knobs_cmd:knobs",
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
    "stop": "Stop the running node and wait until it has stopped.",
    "report": "Write an HTML report with figures of the local pool.",
    "knobs": "List the knobs a candidate may set, their ranges, and the base configs.",
}

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# click >= 8.2 raises this for a group given no subcommand; older ones print the help themselves.
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())

# Options of the top-level group that may also be written after the subcommand.
GLOBAL_VALUE_OPTIONS = ("--home",)
GLOBAL_FLAG_OPTIONS = ("-v", "-vv", "-vvv", "--verbose")


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one line, exit code 1."""

    def show(self, file=None) -> None:  # one line, no "Usage:" banner
        click.echo(f"error: {self.format_message()}", err=True)


class BadInput(UserError):
    """A malformed command line (a value that breaks its rule): one line, exit code 2."""

    exit_code = EXIT_USAGE


def hoist_global_options(args: list[str]) -> list[str]:
    """`args` with the global options moved in front of the subcommand, so that
    `p2pgolf pool ls --home DIR` means `p2pgolf --home DIR pool ls`. Stops at `--`."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in GLOBAL_VALUE_OPTIONS and i + 1 < len(args):
            front += [arg, args[i + 1]]
            i += 2
            continue
        if any(arg.startswith(f"{name}=") for name in GLOBAL_VALUE_OPTIONS) or arg in GLOBAL_FLAG_OPTIONS:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def verbosity(ctx: click.Context | None = None) -> int:
    """How many -v the user gave (before or after the subcommand)."""
    ctx = ctx or click.get_current_context(silent=True)
    return int(ctx.find_root().meta.get("p2pgolf.verbose", 0)) if ctx is not None else 0


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
@click.option("-v", "--verbose", count=True, help="Log more on stderr (-v info, -vv debug); also after the subcommand.")
@click.version_option(package_name="p2pgolf")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: int) -> None:
    """p2pgolf: train candidates, gossip signed results, search together.

    Exit codes: 0 done, 1 could not do it, 2 bad command line, 130 interrupted.
    Global options (--home, -v) may also follow the subcommand.
    """
    ctx.meta["p2pgolf.verbose"] = verbose
    ctx.obj = resolve_home(home)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user mistakes become one line and a non-zero exit code."""
    from p2pgolf.protocol.errors import ProtocolError

    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    try:
        # Without standalone mode click returns ctx.exit(n)'s code instead of exiting.
        code = cli.main(args=args, prog_name="p2pgolf", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except NO_ARGS_IS_HELP as exc:  # `p2pgolf` or `p2pgolf pool` alone: the help, as click shows it
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.UsageError as exc:  # one line, naming where to read more, exit 2
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{where}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ProtocolError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()

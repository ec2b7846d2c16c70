"""Parsing `--proposer NAME=COMMAND` and `[proposers]` in config.toml into ProposerSpec values.

In config.toml a proposer is either a command line, or a table with `command` and optionally
`timeout_s` (seconds one request may take before the proposer is killed) and
`max_output_bytes` (the most it may write on stdout; one that writes more is killed).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from p2pgolf.protocol.errors import ProtocolError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_BYTES = 256 * 1024
TIMEOUT_RANGE_S = (1.0, 3600.0)
MAX_BYTES_RANGE = (1024, 64 * 1024 * 1024)
TABLE_KEYS = ("command", "timeout_s", "max_output_bytes")


@dataclass(frozen=True)
class ProposerSpec:
    """One proposer: its name (the operator is "proposer:NAME") and the command it runs."""

    name: str
    argv: tuple[str, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def operator(self) -> str:
        return f"proposer:{self.name}"


def parse_spec(text: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES) -> ProposerSpec:
    """NAME=COMMAND (the command split as a shell would, never run by one; relative paths of
    existing files made absolute); ProtocolError naming what is wrong."""
    name, sep, command = text.partition("=")
    if not sep:
        raise ProtocolError(f"{text!r} is not NAME=COMMAND", "--proposer")
    return make_spec(name.strip(), command, "--proposer", timeout_s=timeout_s, max_bytes=max_bytes)


def config_spec(name: str, value: object, where: str) -> ProposerSpec:
    """One entry of config.toml's [proposers]: a command line, or a table of TABLE_KEYS."""
    if not isinstance(value, dict):
        return make_spec(name, value, where)  # type: ignore[arg-type]
    extra = sorted(set(value) - set(TABLE_KEYS))
    if extra:
        raise ProtocolError(f"proposer {name!r}: unknown key(s) {', '.join(extra)}; expected {', '.join(TABLE_KEYS)}", where)
    if "command" not in value:
        raise ProtocolError(f"proposer {name!r} has no command", where)
    return make_spec(
        name, value["command"], where,
        timeout_s=value.get("timeout_s", DEFAULT_TIMEOUT_S), max_bytes=value.get("max_output_bytes", DEFAULT_MAX_BYTES),
    )  # fmt: skip


def make_spec(name: str, command: str, where: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES) -> ProposerSpec:
    """A spec from a name and a command line; ProtocolError naming the rule broken."""
    if not NAME.fullmatch(name):
        raise ProtocolError(f"proposer name {name!r} must be 1-32 of a-z 0-9 _ -, starting with a letter or digit", where)
    if type(command) is not str:
        raise ProtocolError(f"the command of proposer {name!r} must be a string", where)
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise ProtocolError(f"cannot split the command of proposer {name!r}: {exc}", where) from None
    if not argv:
        raise ProtocolError(f"proposer {name!r} has an empty command", where)
    # the proposer runs in an empty private directory: a relative path that names a file here
    # (examples/proposers/scripted.py) is made absolute now
    argv = tuple(os.path.abspath(a) if not os.path.isabs(a) and os.path.exists(a) else a for a in argv)
    lo, hi = TIMEOUT_RANGE_S
    if type(timeout_s) not in (int, float) or not lo <= timeout_s <= hi:
        raise ProtocolError(f"the timeout of proposer {name!r} is {timeout_s!r}; it must be {lo:g} to {hi:g} seconds", where)
    lo_b, hi_b = MAX_BYTES_RANGE
    if type(max_bytes) is not int or not lo_b <= max_bytes <= hi_b:
        raise ProtocolError(f"the output cap of proposer {name!r} is {max_bytes!r}; it must be {lo_b} to {hi_b} bytes", where)
    return ProposerSpec(name, argv, float(timeout_s), max_bytes)


def merge_specs(*groups: tuple[ProposerSpec, ...]) -> tuple[ProposerSpec, ...]:
    """Specs from several sources, later ones replacing earlier ones of the same name."""
    out: dict[str, ProposerSpec] = {}
    for group in groups:
        for spec in group:
            out[spec.name] = spec
    return tuple(out.values())

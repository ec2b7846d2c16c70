"""Parsing `--proposer NAME=COMMAND` and `[proposers]` in config.toml into ProposerSpec values."""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from p2pgolf.protocol.errors import ProtocolError

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class ProposerSpec:
    """One proposer: its name (the operator is "proposer:NAME") and the command it runs."""

    name: str
    argv: tuple[str, ...]

    @property
    def operator(self) -> str:
        return f"proposer:{self.name}"


def parse_spec(text: str) -> ProposerSpec:
    """NAME=COMMAND (the command split as a shell would, never run by one; relative paths of
    existing files made absolute); ProtocolError naming what is wrong."""
    name, sep, command = text.partition("=")
    if not sep:
        raise ProtocolError(f"{text!r} is not NAME=COMMAND", "--proposer")
    return make_spec(name.strip(), command, "--proposer")


def make_spec(name: str, command: str, where: str) -> ProposerSpec:
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
    return ProposerSpec(name, argv)


def merge_specs(*groups: tuple[ProposerSpec, ...]) -> tuple[ProposerSpec, ...]:
    """Specs from several sources, later ones replacing earlier ones of the same name."""
    out: dict[str, ProposerSpec] = {}
    for group in groups:
        for spec in group:
            out[spec.name] = spec
    return tuple(out.values())

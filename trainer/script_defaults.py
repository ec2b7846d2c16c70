"""Write a diff into a competition script as its defaults, so the script runs it with no environment.

A submission must run as `torchrun --standalone --nproc_per_node=8 train_gpt.py`, so a script
candidate's diff cannot stay in environment variables: each `os.environ.get("NAME", default)` /
`os.getenv("NAME", default)` of a name in the diff gets its default replaced by the diff's value
(as a string where the script reads a string and casts it, e.g. `bool(int("1"))`). A
self-extracting wrapper is decoded first and the inner source is written out plain (reviewers
read it; the code bytes are counted as written). Nothing is executed: the result is checked by
parsing it again (protocol.script_hparams) and comparing every default with the diff.
`ScriptRewriteError` names a hyperparameter that has no default to replace or did not take.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any


class ScriptRewriteError(ValueError):
    """The diff cannot be written into the script; the message names the hyperparameter."""


def write_defaults(source: bytes | str, diff: Mapping[str, Any]) -> str:
    """The script's (inner) source with every diff entry as its default (see module doc)."""
    from p2pgolf.protocol.script_hparams import read_hyperparameters

    vocab = read_hyperparameters(source)
    text = vocab.inner_source if getattr(vocab, "inner_source", "") else (source.decode("utf-8") if isinstance(source, bytes) else source)
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode("utf-8")))
    raw = text.encode("utf-8")
    edits: list[tuple[int, int, bytes]] = []
    seen: set[str] = set()
    for node in ast.walk(tree):
        found = _env_default(node)
        if found is None:
            continue
        name, default = found
        if name not in diff:
            continue
        if default is None:
            raise ScriptRewriteError(f"hyperparameter {name}: the script reads it without a default, so the diff cannot be written in")
        start = offsets[default.lineno - 1] + default.col_offset
        end = offsets[default.end_lineno - 1] + default.end_col_offset
        edits.append((start, end, _literal(diff[name], default).encode("utf-8")))
        seen.add(name)
    missing = sorted(set(diff) - seen)
    if missing:
        raise ScriptRewriteError(f"hyperparameter {missing[0]}: the script has no os.environ.get for it")
    for start, end, new in sorted(edits, reverse=True):
        raw = raw[:start] + new + raw[end:]
    out = raw.decode("utf-8")
    check = read_hyperparameters(out).defaults()
    for name, value in diff.items():
        if check.get(name) != value or type(check.get(name)) is not type(value):
            raise ScriptRewriteError(f"hyperparameter {name}: written as {value!r} but the script now reads {check.get(name)!r}")
    return out


def _env_default(node: ast.AST) -> tuple[str, ast.expr | None] | None:
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    is_get = isinstance(func, ast.Attribute) and (
        (func.attr == "get" and isinstance(func.value, ast.Attribute) and func.value.attr == "environ")
        or (func.attr == "getenv" and isinstance(func.value, ast.Name) and func.value.id == "os")
    )
    if not is_get or not isinstance(node.args[0], ast.Constant) or not isinstance(node.args[0].value, str):
        return None
    return node.args[0].value, (node.args[1] if len(node.args) > 1 else None)


def _literal(value: Any, default: ast.expr) -> str:
    as_string = isinstance(default, ast.Constant) and isinstance(default.value, str)
    if isinstance(value, bool):
        text = "1" if value else "0"
        return repr(text) if as_string else ("True" if value else "False") if isinstance(getattr(default, "value", None), bool) else text
    if isinstance(value, (int, float)):
        return repr(repr(value)) if as_string else repr(value)
    return repr(str(value))

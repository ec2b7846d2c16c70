"""The hyperparameters a record's run actually used, merged from three sources in order:

1. the script's own defaults (read by parsing, never by running: protocol/script_hparams.py);
2. the environment the README's run command sets;
3. the `Hyperparameters:` block the script printed in the log (the ground truth, when present;
   it prints attribute names in lower case, which are matched to the script's upper-case
   environment names).

Names the script does not read are ignored (the README also sets DATA_PATH, RUN_ID, ...), as
are the ones the runner sets itself (protocol.script_hparams.RUNNER_SET). Values are converted to
the hyperparameter's type; a value that does not convert raises FolderError naming the file and
the name. Ranges are not checked: a record states what was run, however far from the default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pgolf.pool.bridge.errors import FolderError


@dataclass(frozen=True)
class MergedHyperparameters:
    """Every hyperparameter's value as run, where each came from, and the diff from the defaults."""

    values: dict[str, Any]  # name -> value (the defaults included)
    source: dict[str, str]  # name -> "default" | README file | log file
    diff: dict[str, Any]  # names whose value differs from the script's default, sorted


def merge_hyperparameters(vocab: Any, readme_env: Mapping[str, str], readme_file: str, log_block: Mapping[str, str], log_file: str) -> MergedHyperparameters:
    """Merge (see module doc). `vocab` is a protocol.script_hparams.ScriptVocabulary."""
    from p2pgolf.protocol.script_hparams import RUNNER_SET

    params = {n: p for n, p in vocab.params.items() if n not in RUNNER_SET}
    values: dict[str, Any] = {n: p.default for n, p in params.items() if p.default is not None}
    source = {n: "default" for n in values}
    for name, text in readme_env.items():
        if name in params:
            values[name] = typed_value(params[name], text, readme_file)
            source[name] = readme_file
    for key, text in log_block.items():
        name = key.upper()
        if name in params:
            values[name] = typed_value(params[name], text, log_file)
            source[name] = log_file
    diff = {}
    for name in sorted(values):
        default = params[name].default
        if default is None or type(values[name]) is not type(default) or values[name] != default:
            diff[name] = values[name]
    return MergedHyperparameters(values, source, diff)


def typed_value(param: Any, text: Any, file: str) -> Any:
    """`text` as a value of the hyperparameter's type; FolderError(file, name, why) if it is not one."""
    kind = param.type
    raw = str(text).strip()
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            number = float(raw)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind is float:
            number = float(raw)
            if not math.isfinite(number):
                raise ValueError
            return number + 0.0
    except ValueError:
        raise FolderError(file, param.name, f"{raw!r} is not a {kind.__name__} (the script reads {param.name} as one)") from None
    if len(raw) > 256 or any(ord(c) < 32 for c in raw):
        raise FolderError(file, param.name, "a string value of at most 256 printable characters is expected")
    return raw

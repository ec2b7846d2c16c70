"""The environment a README's run command sets: `NAME=value ... torchrun ... train_gpt.py`.

Competition READMEs show the exact command in a fenced code block, often over several lines
joined by backslashes. `readme_env` returns the NAME=value assignments in front of the first
command that runs python or torchrun (later commands are usually other seeds of the same run;
an explicit SEED there is left to the logs). Shell quoting is undone with shlex; nothing runs.
"""

from __future__ import annotations

import re
import shlex

_FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
_ASSIGN = re.compile(r"^([A-Z][A-Z0-9_]{0,63})=(.*)$", re.S)
_RUNNERS = ("torchrun", "python", "python3")


def readme_env(text: str) -> dict[str, str]:
    """NAME -> value text of the first run command in the README's code blocks ({} if none)."""
    for block in _FENCE.findall(text or ""):
        joined = re.sub(r"\\\r?\n", " ", block)
        for line in joined.splitlines():
            env = _command_env(line)
            if env is not None:
                return env
    return {}


def _command_env(line: str) -> dict[str, str] | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    env: dict[str, str] = {}
    for i, word in enumerate(words):
        if word == "env" and i == 0:
            continue
        m = _ASSIGN.match(word)
        if m:
            env[m.group(1)] = m.group(2)
            continue
        base = word.rsplit("/", 1)[-1]
        return env if base in _RUNNERS or base.startswith("python3.") else None
    return None

"""The environment of the trainer's own child processes (a run, a re-evaluation).

The child is started as `python -m p2pgolf.trainer...`. Without PYTHONSAFEPATH, Python puts the
current directory first on sys.path, so a `p2pgolf.py` or `p2pgolf/` in the folder the user
happened to start the node from would be imported instead of ours. The variable (Python 3.11+,
the `-P` flag's environment form) is inherited, so torchrun's workers are covered too.
"""

from __future__ import annotations

import os


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, with the current directory kept off the child's sys.path."""
    env = dict(os.environ)
    env["PYTHONSAFEPATH"] = "1"
    env.update(extra)
    return env

"""Progress events from a training child process to whoever launched it.

The child writes one line per event on its stdout: the prefix `@p2pgolf ` and a JSON object.
Anything else on stdout is not an event (libraries print), so the parent ignores it. An event
is small and flat so any backend can emit it and any front end (the train command's live line,
the node's research loop) can show it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

__all__ = ["Progress", "PREFIX", "emit", "parse_line"]

PREFIX = "@p2pgolf "
PHASES = ("starting", "loading", "training", "exporting", "evaluating", "done")


@dataclass(frozen=True)
class Progress:
    """One progress event. `phase` is one of PHASES; the numbers are 0 where they do not apply."""

    phase: str
    step: int = 0
    train_loss: float = 0.0
    elapsed_s: float = 0.0
    budget_s: float = 0.0
    tokens_per_s: float = 0.0
    done: int = 0  # evaluation windows done (phase "evaluating")
    total: int = 0
    message: str = ""

    @property
    def time_left_s(self) -> float:
        return max(self.budget_s - self.elapsed_s, 0.0)


def emit(event: Progress, stream: TextIO | None = None) -> None:
    """Write `event` as one line and flush, so the parent sees it at once."""
    out = stream or sys.stdout
    out.write(PREFIX + json.dumps(asdict(event), separators=(",", ":")) + "\n")
    out.flush()


def parse_line(line: str) -> Progress | None:
    """The event on `line`, or None if the line is not a well-formed event."""
    if not line.startswith(PREFIX):
        return None
    try:
        obj: Any = json.loads(line[len(PREFIX) :])
        if not isinstance(obj, dict) or obj.get("phase") not in PHASES:
            return None
        return Progress(**obj)
    except (ValueError, TypeError):
        return None

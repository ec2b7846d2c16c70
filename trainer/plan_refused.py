"""The one error for a run refused before it starts because of what its config would cost.

`PlanRefused` is a ProtocolError (so every caller that reports a bad config reports it in one
line) with two fields a caller can key on: `reason` (one of REASONS) and `knob` (the knob to
change). The research loop records `str(exc)` as the failed experiment's note; a node that
remembers failed candidates keys them on `(reason, knob)`.
"""

from __future__ import annotations

from p2pgolf.protocol.errors import ProtocolError

MEMORY = "memory"  # training or evaluation would not fit the device's memory
PARAMETERS = "parameters"  # more parameters than the benchmark's size cap could ever hold
EVAL_WORK = "eval_work"  # sliding-window evaluation would re-read every token too many times
REASONS = (MEMORY, PARAMETERS, EVAL_WORK)


class PlanRefused(ProtocolError):
    """A config refused before training: `reason` (REASONS) and the `knob` to change."""

    def __init__(self, reason: str, knob: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.reason = reason
        self.knob = knob
        super().__init__(f"refused before training ({reason}): {message}", f"knob {knob}")

"""Where join's lines go: the terminal (live view or plain lines), `--log FILE`, `--quiet`.

- stdout a terminal, not quiet: the live view (node/views/live.py); lines print above it.
- stdout not a terminal (a pipe, a service's journal): plain lines as before, a status line
  every --status-every seconds.
- `--quiet`: nothing on stdout; warnings and errors still go to stderr.
- `--log FILE`: every line (and the periodic status line, and warnings) appended to FILE with a
  UTC timestamp, whatever stdout is; the file is created with mode 0600 if new and opened by
  name for each line, so a log rotated by moving it away goes on in a new file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path


class JoinOutput:
    def __init__(self, *, quiet: bool = False, log_path: Path | None = None, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.log_path = log_path
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self.live = None  # a LiveView while one runs
        if log_path is not None:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.close(fd)
            handler = logging.FileHandler(log_path, encoding="utf-8")
            handler.setLevel(logging.WARNING)
            utc = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%SZ")
            utc.converter = time.gmtime  # the same stamp as the lines around it
            handler.setFormatter(utc)
            logging.getLogger().addHandler(handler)
            self._handler = handler

    @property
    def wants_live(self) -> bool:
        return self.tty

    @property
    def wants_status_lines(self) -> bool:
        """Periodic plain status lines on stdout (not on a terminal with its live view)."""
        return not self.quiet and not self.tty

    def say(self, text: str) -> None:
        """One line for the user."""
        self.log(text)
        if self.quiet:
            return
        if self.live is not None:
            self.live.say(text)
            return
        out = self.stream
        out.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
        out.flush()

    def status(self, line: str) -> None:
        """The periodic status line: to the log always, to stdout when plain lines are wanted."""
        self.log(line)
        if self.wants_status_lines:
            self.stream.write(line + "\n")
            self.stream.flush()

    def log(self, text: str) -> None:
        if self.log_path is None:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} {text}\n")
        except OSError as exc:
            print(f"p2pgolf: cannot write to the log {self.log_path}: {exc}", file=sys.stderr)

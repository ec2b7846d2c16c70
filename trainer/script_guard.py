"""Run a script's command line and stop its whole process group if the launcher dies.

`python script_guard.py LAUNCHER_PID -- ARGV...` starts ARGV as a child in this process's group
(the runner made this process a session leader), waits for it and exits with its status. If the
launcher (the node's trainer thread's process) disappears, as when a node is killed with -9, it
kills the group: nobody is left to read the result, and the script would otherwise hold the CPU
or GPU until its own wall-clock cap. The same guarantee built-in runs have (trainer.runner).
Standard library only: it runs inside the script's scrubbed environment.
"""

import os
import signal
import subprocess
import sys
import threading
import time

POLL_S = 1.0


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: script_guard.py LAUNCHER_PID -- ARGV...", file=sys.stderr)
        return 2
    launcher = int(argv[0])
    child = subprocess.Popen(argv[2:])

    def watch() -> None:
        while child.poll() is None:
            try:
                os.kill(launcher, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGKILL)
            except PermissionError:
                pass
            time.sleep(POLL_S)

    threading.Thread(target=watch, daemon=True).start()
    try:
        return child.wait()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

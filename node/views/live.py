"""join's live view on a terminal: one screen redrawn in place (rich's Live display).

It shows the run in progress with a progress bar against its budget (step, loss, tokens/s,
time left, candidate, operator and why), the runs trusted peers announce, this node's best and the collective best for its
hardware class with their uncertainty, the last records in and out, peers, pool size and
rejected counts. Narrow terminals (under WIDE columns) get one column and fewer fields.

Guarantees: every string that came from a peer or a record (labels, notes, hardware names,
candidate ids) is put on screen as rich `Text`, never parsed as markup, so `[link=...]` or `[/]`
shows as typed. The pool is read read-only in a worker thread (node/views/pool_rows.py), so a
large pool never stalls the node. Lines the node prints (`say`) go above the live area.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from p2pgolf.node.views.plain_console import plain_console
from p2pgolf.node.views.pool_rows import Row, read_rows

WIDE = 80  # columns from which the view uses two columns per row
RECENT = 5  # records in and out shown
REFRESH_S = 0.5
POOL_EVERY_S = 2.0
PEERS_RUNNING_SHOWN = 4  # trusted peers' runs in progress shown under the run panel


@dataclass
class Bests:
    """Best estimates on this node's class: (mean, sd, runs, candidate) or None."""

    hw: str | None = None
    own: tuple[float, float, int, str] | None = None
    collective: tuple[float, float, int, str, str] | None = None  # ..., author label


@dataclass
class PoolWatch:
    """What the view knows of the pool: every row seen (for bests) and the latest in and out."""

    own_key: str
    hw: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    last_received_ms: int = -1
    rows: list[Row] = field(default_factory=list)  # on this node's class (all while it is not known)
    candidate_of: dict[str, str] = field(default_factory=dict)  # every result's record id -> candidate
    recent_in: deque = field(default_factory=lambda: deque(maxlen=RECENT))
    recent_out: deque = field(default_factory=lambda: deque(maxlen=RECENT))
    bests: Bests = field(default_factory=Bests)

    def poll(self, db_path, bench: str | None) -> bool:
        """Read rows received since the last poll; recompute the bests if any came. Returns
        whether anything new came. Runs in a worker thread."""
        new = read_rows(db_path, bench=bench, received_after_ms=self.last_received_ms)
        if not new:
            return False
        first = self.last_received_ms < 0
        self.last_received_ms = max(r.received_ms for r in new)
        for r in new:
            if r.kind == "result":
                self.candidate_of[r.id] = r.candidate
        # only this class's rows are kept: a 100,000-record pool's other classes need no memory here
        self.rows.extend(r for r in new if self.hw is None or r.hw == self.hw)
        for r in new[-RECENT:] if first else new:
            (self.recent_out if r.author == self.own_key else self.recent_in).append(r)
        self.bests = self._bests()
        return True

    def label(self, key: str) -> str:
        return "you" if key == self.own_key else self.labels.get(key) or key[:8]

    def _bests(self) -> Bests:
        from p2pgolf.node.views.report_data import class_leaderboard

        results = [r for r in self.rows if r.kind == "result"]
        hw = self.hw or next((r.hw for r in reversed(results) if r.author == self.own_key), None)
        if hw is None or not results:
            return Bests(hw)
        board = class_leaderboard([r for r in results if r.hw == hw], self.rows, self.label, self.candidate_of)
        own_candidates = {r.candidate for r in results if r.author == self.own_key and r.hw == hw}
        own = next((e for e in board if e.candidate in own_candidates), None)
        top = board[0] if board else None
        return Bests(
            hw,
            (own.estimate, own.sd, own.n, own.candidate) if own else None,
            (top.estimate, top.sd, top.n, top.candidate, ", ".join(top.authors)) if top else None,
        )


@dataclass(frozen=True)
class Screen:
    """Everything one frame shows (a plain value: `render` is a pure function of it)."""

    status: Any  # node.status.NodeStatus
    tokens_per_s: float
    watch: PoolWatch
    finishing: str = ""  # "finishing experiment n: ..." after a Ctrl-C
    since_event_s: float = 0.0  # seconds since the run's latest progress event


def render(screen: Screen, width: int) -> Group:
    """The frame for a terminal `width` columns wide."""
    st, w = screen.status, screen.watch
    narrow = width < WIDE
    parts: list[Any] = [_run_panel(st.experiment, screen.tokens_per_s, width, narrow, screen.finishing, screen.since_event_s)]
    for run in st.peers_running[:PEERS_RUNNING_SHOWN]:  # what trusted peers train now (their announcements)
        diff = " ".join(f"{k}={v}" for k, v in run["diff"].items()) or "(no diff)"
        parts.append(Text(f"peer {run['peer_id'][:16]} runs {run['candidate'][:12]} = {run['base']} {diff}", overflow="ellipsis", no_wrap=True))
    parts.append(_bests_table(w.bests, narrow))
    parts.append(_records_table("in", w.recent_in, w, narrow))
    parts.append(_records_table("out", w.recent_out, w, narrow))
    counts = Text(
        f"peers {len(st.peers)}  pool {st.pool_records}  in {st.records_in}  out {st.records_out}  rejected {st.rejected}"
        f"  up {_duration(st.uptime_s)}",
        no_wrap=not narrow,
        overflow="fold",
    )
    parts.append(counts)
    return Group(*parts)


def _run_panel(exp: dict | None, tokens_per_s: float, width: int, narrow: bool, finishing: str, since_event_s: float = 0.0) -> Panel:
    if exp is None:
        return Panel(Text("no experiment in progress" + (f"  {finishing}" if finishing else "")), title="run", title_align="left")
    budget = float(exp.get("budget_s") or 0.0)
    phase = str(exp.get("phase", ""))
    # Events come once per logged step (minutes apart on a slow machine): count on from the last.
    trained = float(exp.get("training_s") or 0.0) + (max(since_event_s, 0.0) if phase == "training" else 0.0)
    done = min(trained, budget) if budget > 0 else 0.0
    if phase in ("exporting", "evaluating", "done"):
        done = budget
    bar = ProgressBar(total=budget or 1.0, completed=done, width=max(10, width - 30))
    line = Table.grid(padding=(0, 1))
    line.add_row(bar, Text(f"{_duration(done)}/{_duration(budget)} {phase}"))
    loss = float(exp.get("train_loss") or 0.0)
    facts = Text(f"step {exp.get('step', 0)}  loss {loss:.4f}  {tokens_per_s:,.0f} tokens/s  left: {exp.get('remaining', '')}")
    what = Text(f"experiment {exp.get('n')}: {exp.get('operator', '')} of candidate {str(exp.get('candidate', ''))[:12]}")
    why = Text(f"why: {exp.get('why') or exp.get('operator', '')}", overflow="fold")
    rows: list[Any] = [what, line, facts, why]
    if not narrow:
        diff = " ".join(f"{k}={v}" for k, v in (exp.get("diff") or {}).items()) or "(no diff)"
        rows.insert(1, Text(f"{exp.get('base', '')} {diff}", overflow="ellipsis", no_wrap=True))
    if finishing:
        rows.append(Text(finishing, style="bold"))
    return Panel(Group(*rows), title="run", title_align="left")


def _bests_table(b: Bests, narrow: bool) -> Any:
    if narrow:  # a table's columns wrap badly below 80 columns: one line each
        lines = [Text(f"best on {b.hw or 'this class'}", overflow="fold")]
        for name, best in (("this node", b.own), ("collective", b.collective)):
            lines.append(Text(f"{name:<10} " + (f"{best[0]:.4f} ± {best[1]:.4f} ({best[2]} runs)" if best else "-"), overflow="fold"))
        return Group(*lines)
    t = Table(title=Text(f"best on {b.hw or 'this class'}"), title_justify="left", expand=True, show_edge=False)
    t.add_column("")
    t.add_column("val_bpb")
    t.add_column("runs")
    t.add_column("candidate")
    if not narrow:
        t.add_column("by")
    for name, best in (("this node", b.own), ("collective", b.collective)):
        if best is None:
            t.add_row(Text(name), Text("-"), Text(""), Text(""), *([Text("")] if not narrow else []))
            continue
        cells = [Text(name), Text(f"{best[0]:.4f} ± {best[1]:.4f}"), Text(str(best[2])), Text(best[3][:10])]
        if not narrow:
            cells.append(Text(best[4] if len(best) > 4 else "you", overflow="ellipsis", no_wrap=True))
        t.add_row(*cells)
    return t


def _records_table(direction: str, rows, w: PoolWatch, narrow: bool) -> Any:
    if narrow:
        lines = [Text(f"last records {direction}")]
        for r in reversed(rows):
            what = r.candidate[:8] if r.kind == "result" else f"{r.method[:5]} {r.subject[:6]}"
            lines.append(Text(f" {w.label(r.author)[:12]:<12} {what:<12} {r.val_bpb:.4f}", overflow="ellipsis", no_wrap=True))
        return Group(*lines)
    t = Table(title=Text(f"last records {direction}"), title_justify="left", expand=True, show_edge=False)
    for name in ("from" if direction == "in" else "by", "candidate", "val_bpb", *(() if narrow else ("hardware",))):
        t.add_column(name, overflow="ellipsis", no_wrap=True)
    for r in reversed(rows):
        what = r.candidate[:10] if r.kind == "result" else f"{r.method} {r.subject[:8]}"
        cells = [Text(w.label(r.author)), Text(what), Text(f"{r.val_bpb:.4f}")]
        if not narrow:
            cells.append(Text(r.hw))
        t.add_row(*cells)
    return t


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


class LiveView:
    """The live display of one join process; `run` redraws until cancelled."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or plain_console()
        self.live: Live | None = None

    def say(self, text: str) -> None:
        """A plain line above the live area (or on its own, before and after it)."""
        self.console.print(Text(text), soft_wrap=True)

    async def run(self, node: Any, control: Any, bench_id: str | None) -> None:
        import trio

        watch = PoolWatch(own_key=node.identity.public_hex)
        db_path = getattr(getattr(node.options, "home", None), "pool_db", None) or getattr(node.store, "path", None)

        def refresh_pool() -> None:
            try:
                watch.labels = node.trust.labels()
            except Exception:
                pass
            if watch.hw is None:
                watch.hw = _own_hw(control)
            if db_path is not None:
                watch.poll(db_path, bench_id)
            if watch.bests.hw is None:
                watch.bests = Bests(watch.hw)

        await trio.to_thread.run_sync(refresh_pool)
        polled = time.monotonic()
        with _logging_above(self), Live(self._frame(node, control, watch), console=self.console, refresh_per_second=4, transient=False,
                  redirect_stdout=False, redirect_stderr=False, auto_refresh=False) as live:  # fmt: skip
            self.live = live
            try:
                while True:
                    await trio.sleep(REFRESH_S)
                    if time.monotonic() - polled >= POOL_EVERY_S:
                        await trio.to_thread.run_sync(refresh_pool)
                        polled = time.monotonic()
                    live.update(self._frame(node, control, watch), refresh=True)
            finally:
                live.update(self._frame(node, control, watch), refresh=True)
                self.live = None

    def _frame(self, node, control, watch: PoolWatch) -> Group:
        status = node.status()
        event = getattr(control, "progress", None) if control is not None else None
        finishing = ""
        if control is not None and control.finishing and control.current is not None:
            finishing = f"finishing experiment {control.current.n}: {control.remaining()}"
        since = time.monotonic() - control.progress_at if event is not None else 0.0
        return render(Screen(status, float(getattr(event, "tokens_per_s", 0.0) or 0.0), watch, finishing, since), self.console.width)


class _LinesAbove:
    """A stream for logging handlers while the view runs: whole lines go above the live area
    (a handler writing to the terminal directly would tear the frame)."""

    def __init__(self, view: LiveView) -> None:
        self.view = view
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.view.say(line)
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def _logging_above(view: LiveView) -> Iterator[None]:
    """Point the root logger's terminal handlers at the view for as long as it runs."""
    swapped = []
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and getattr(handler.stream, "isatty", lambda: False)():
            swapped.append((handler, handler.setStream(_LinesAbove(view))))
    try:
        yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)


def _own_hw(control) -> str | None:
    """This machine's hardware class key, as the research loop measures on it."""
    if control is None:
        return None
    try:
        from p2pgolf.trainer.hardware import detect_hardware

        return detect_hardware().key
    except Exception:
        return None

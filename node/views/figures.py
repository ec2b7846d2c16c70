"""The report's figures as PNG bytes, drawn with matplotlib (the field's standard plotting
library; the optional extra `report`). Headless: the Agg backend, no display needed.

Peer-supplied text (labels) is drawn with matplotlib's mathtext off, so `$...$` in a label is
shown as typed, never interpreted.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

from p2pgolf.node.views.report_data import Leaderboard, OperatorStats, ReportData, Step

MAX_AUTHOR_CURVES = 8  # per class; the rest are summarised by the collective curve
DPI = 100


class PlottingMissing(RuntimeError):
    """matplotlib is not installed."""


def figures(data: ReportData) -> dict[str, bytes]:
    """name -> PNG bytes, for every figure the data allow."""
    plt = _pyplot()
    out: dict[str, bytes] = {}
    with plt.rc_context({"text.usetex": False, "text.parse_math": False, "font.size": 9}):
        if data.curves:
            out["best_over_time"] = _best_over_time(plt, data)
        if data.leaderboards:
            out["leaderboard"] = _leaderboard(plt, data.leaderboards[0])
        if data.lineage:
            out["lineage"] = _lineage(plt, data.lineage)
        if data.operators is not None and data.operators.counts:
            out["operators"] = _operators(plt, data.operators)
    return out


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlottingMissing("p2pgolf report needs matplotlib: pip install 'p2pgolf[report]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _dates(times_ms):
    return [datetime.fromtimestamp(t / 1000, tz=timezone.utc) for t in times_ms]


def _best_over_time(plt, data: ReportData) -> bytes:
    classes = list(data.curves)
    fig, axes = plt.subplots(len(classes), 1, figsize=(9, 3.2 * len(classes)), squeeze=False, layout="constrained")
    for ax, hw in zip(axes[:, 0], classes):
        curves = data.curves[hw]
        for i, c in enumerate(curves[: MAX_AUTHOR_CURVES + 1]):
            collective = c.author == ""
            ax.step(_dates(c.times_ms), c.best, where="post", label=c.label, linewidth=2.5 if collective else 1.0,
                    color="black" if collective else None, alpha=1.0 if collective else 0.8)  # fmt: skip
        ax.set_title(f"best val_bpb over time: {hw}" + ("  (this node's class)" if hw == data.own_hw else ""))
        ax.set_ylabel("val_bpb")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right", ncol=2)
    return _png(plt, fig)


def _leaderboard(plt, board: Leaderboard) -> bytes:
    entries = list(board.entries)[::-1]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(entries) + 1.2), layout="constrained")
    ax.errorbar([e.estimate for e in entries], range(len(entries)), xerr=[2 * e.sd for e in entries], fmt="o", capsize=3)
    ax.set_yticks(range(len(entries)), [f"{e.candidate[:10]} ({', '.join(e.authors)[:24]})" for e in entries])
    ax.set_xlabel("estimated val_bpb (bars: 2 sd)")
    ax.set_title(f"leaderboard: {board.hw}")
    ax.grid(alpha=0.3, axis="x")
    return _png(plt, fig)


def _lineage(plt, steps: list[Step]) -> bytes:
    by_depth: dict[int, list[Step]] = {}
    for s in steps:
        by_depth.setdefault(s.depth, []).append(s)
    pos = {}
    for depth, group in by_depth.items():
        for i, s in enumerate(sorted(group, key=lambda s: s.val_bpb)):
            pos[s.record] = (depth, i - (len(group) - 1) / 2)
    width = max(by_depth) + 1
    tallest = max(len(g) for g in by_depth.values())
    fig, ax = plt.subplots(figsize=(min(2.2 * width + 2, 20), max(2.5, 0.8 * tallest + 1.5)), layout="constrained")
    from matplotlib.collections import LineCollection

    edges = [(pos[p], pos[s.record]) for s in steps for p in s.parents]
    colours = ["tab:purple" if s.recombination else "grey" for s in steps for _ in s.parents]
    ax.add_collection(LineCollection(edges, colors=colours, linewidths=1.2, zorder=1))
    for marker in ("o", "D"):  # one scatter call per marker: a hundred nodes draw at once
        group = [s for s in steps if (s.recombination == (marker == "D"))]
        if group:
            ax.scatter([pos[s.record][0] for s in group], [pos[s.record][1] for s in group], s=260, marker=marker, zorder=3,
                       c=["gold" if s.leader else "white" for s in group], edgecolors=["tab:green" if s.verified else "black" for s in group],
                       linewidths=[2.5 if s.verified else 1.0 for s in group])  # fmt: skip
    for s in steps:
        x, y = pos[s.record]
        ax.text(x, y - 0.28, f"{s.candidate[:8]}\n{s.author[:14]}\n{s.val_bpb:.4f}", ha="center", va="top", fontsize=7)
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-tallest / 2 - 0.9, tallest / 2 + 0.5)
    ax.axis("off")
    ax.set_title("lineage of the leading candidates (gold: leader, diamond: recombination, green edge: verified by another key)")
    return _png(plt, fig)


def _operators(plt, ops: OperatorStats) -> bytes:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]}, layout="constrained")
    names = list(ops.shares)
    left.stackplot(_dates(ops.bins_ms), [ops.shares[o] for o in names], labels=[f"{o} ({ops.counts[o]})" for o in names], step="post")
    left.set_ylim(0, 1)
    left.set_ylabel("share of experiments")
    left.set_title("experiments by proposal operator")
    left.legend(fontsize=7, loc="upper left")
    for label in left.get_xticklabels():
        label.set_rotation(30)
    judged = [o for o in names if ops.yields.get(o) is not None]
    right.bar(judged, [ops.yields[o] for o in judged], color="tab:blue")
    right.set_title("yield: share of results that beat their author's best")
    right.set_ylim(0, max([ops.yields[o] for o in judged] + [0.1]) * 1.2)
    return _png(plt, fig)

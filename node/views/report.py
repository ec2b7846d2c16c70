"""`p2pgolf report`: one self-contained HTML file plus the same figures as PNG files.

Guarantees: the HTML needs no server and no network (figures inline as data: URIs, styles
inline, a Content-Security-Policy that forbids fetching anything but data: images); every piece
of text that came from a record or the trust store (labels, notes, knob values, hardware names)
is HTML-escaped, so a note holding markup shows as text.
"""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass
from pathlib import Path

from p2pgolf.node.views.report_data import Entry, ReportData

HTML_NAME = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
FIGURE_NAMES = ("best_over_time", "leaderboard", "lineage", "operators")  # node/views/figures.py draws these
SECTIONS = ("best-over-time", "leaderboard", "lineage", "operators", "peers", "notes")
RECENT_NOTES = 20


@dataclass(frozen=True)
class Written:
    html: Path
    pngs: tuple[Path, ...]
    seconds: float


def write_report(out_dir: Path, data: ReportData, pngs: dict[str, bytes], *, title: str, notes: list[tuple[str, str, str]] = ()) -> Written:
    """Write report.html and <figure>.png into `out_dir`. `notes`: (author label, record id,
    note) of recent records, shown as text."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in FIGURE_NAMES:  # a figure this pool does not allow must not be left from an earlier report
        if name not in pngs:
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    for name, png in pngs.items():
        path = out_dir / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    page = render_html(data, pngs, title=title, notes=notes)
    target = out_dir / HTML_NAME
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return Written(target, tuple(paths), time.monotonic() - started)


def render_html(data: ReportData, pngs: dict[str, bytes], *, title: str, notes=()) -> str:
    e = _esc
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        f"<title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>{data.records} records; this node's hardware class: {e(data.own_hw or 'none yet')}; "
        f"classes: {', '.join(f'{e(h)} ({n} results)' for h, n in data.classes.items()) or 'none'}</p>",
    ]
    parts.append(_section("best-over-time", "Best val_bpb over time", _img(pngs, "best_over_time", "best val_bpb over time per hardware class"), "The collective (thick) and each node, per hardware class."))
    boards = []
    for board in data.leaderboards:
        boards.append(f"<h3>{e(board.hw)} <small>({board.results} results; {e(board.method)})</small></h3>")
        boards.append(_leaderboard_table(board.entries))
    parts.append(_section("leaderboard", "Leaderboards", _img(pngs, "leaderboard", "leaderboard of this hardware class") + "".join(boards) or "<p>no results yet</p>"))
    steps = "".join(
        f"<tr><td>{s.depth}</td><td><code>{e(s.candidate[:12])}</code></td><td>{e(s.author)}</td><td>{s.val_bpb:.4f}</td>"
        f"<td>{'recombination' if s.recombination else ('mutation' if s.parents else 'root')}</td><td>{'yes' if s.verified else ''}</td>"
        f"<td>{'leader' if s.leader else ''}</td><td><code>{e(s.record[:12])}</code></td></tr>"
        for s in data.lineage
    )
    lineage_table = f"<table><tr><th>step</th><th>candidate</th><th>found by</th><th>val_bpb</th><th>kind</th><th>verified</th><th></th><th>record</th></tr>{steps}</table>" if steps else "<p>no lineage yet</p>"
    parts.append(_section("lineage", "Lineage of the leading candidates", _img(pngs, "lineage", "lineage graph") + lineage_table))
    ops = data.operators
    op_rows = "".join(
        f"<tr><td>{e(o)}</td><td>{ops.counts[o]}</td><td>{'' if ops.yields[o] is None else f'{ops.yields[o]:.0%}'}</td></tr>" for o in ops.counts
    ) if ops else ""
    parts.append(_section("operators", "Proposal operators", _img(pngs, "operators", "share of experiments by operator")
                          + f"<table><tr><th>operator</th><th>experiments</th><th>yield</th></tr>{op_rows}</table>",
                          "Operators are read from each record's shape (parents, attestation method and note)."))  # fmt: skip
    peer_rows = "".join(
        f"<tr><td>{e(p.label)}</td><td><code>{e(p.author[:16])}</code></td><td>{e(p.status)}</td><td>{p.records}</td><td>{p.results}</td>"
        f"<td>{'' if math.isnan(p.best) else f'{p.best:.4f}'}</td><td>{p.checked}</td><td>{_agreement(p.agreed, p.checked)}</td></tr>"
        for p in data.peers
    )
    parts.append(_section("peers", "Peers", "<table><tr><th>label</th><th>key</th><th>trust</th><th>records</th><th>results</th><th>best</th>"
                          f"<th>checked by others</th><th>agreed</th></tr>{peer_rows}</table>"))  # fmt: skip
    note_rows = "".join(f"<tr><td>{e(who)}</td><td><code>{e(rid[:12])}</code></td><td>{e(note)}</td></tr>" for who, rid, note in notes)
    parts.append(_section("notes", "Latest notes", f"<table><tr><th>author</th><th>record</th><th>note</th></tr>{note_rows}</table>" if note_rows else "<p>no notes</p>"))
    parts.append("</body></html>")
    return "\n".join(parts)


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _section(anchor: str, heading: str, body: str, caption: str = "") -> str:
    cap = f"<p class=caption>{_esc(caption)}</p>" if caption else ""
    return f'<section id="{anchor}"><h2>{_esc(heading)}</h2>{cap}{body}</section>'


def _img(pngs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    return f'<img alt="{_esc(alt)}" data-figure="{name}" src="data:image/png;base64,{base64.b64encode(pngs[name]).decode("ascii")}">'


def _leaderboard_table(entries: tuple[Entry, ...]) -> str:
    e = _esc
    rows = "".join(
        f"<tr><td>{i}</td><td><code>{e(x.candidate[:12])}</code></td><td>{x.estimate:.4f} &plusmn; {x.sd:.4f}</td><td>{x.n}</td>"
        f"<td>{e(', '.join(x.authors))}</td><td>{e(_diff(x.diff))}</td></tr>"
        for i, x in enumerate(entries, 1)
    )
    return f"<table><tr><th>#</th><th>candidate</th><th>val_bpb (&plusmn; sd)</th><th>runs</th><th>by</th><th>diff</th></tr>{rows}</table>"


def _diff(diff: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(diff.items())) or "(base)"


def _agreement(agreed: int, checked: int) -> str:
    return f"{agreed}/{checked} ({agreed / checked:.0%})" if checked else ""


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}.caption{color:#555}code{font-size:.95em}"
)

"""The one way node/ makes a rich Console: markup and emoji codes off.

Tables and lines on screen carry strings from peers and records (hardware model, note, labels,
base names, diff values, addresses). With markup on, rich would parse them: `[link=...]` would
emit a terminal hyperlink and `[/]` would raise MarkupError, so one record in an append-only
pool would break `pool ls` for good. With markup off every string, peer's or ours, shows as
typed; our own emphasis is given as `rich.text.Text` with a style, never as markup.
(Control characters cannot reach here: protocol/records.py refuses them in every string.)
"""

from __future__ import annotations

from typing import Any


def plain_console(**kwargs: Any):
    """A rich Console that never interprets markup (`[...]`) or emoji codes (`:name:`) in the
    strings it prints, including table cells, titles and tree labels."""
    from rich.console import Console

    return Console(markup=False, emoji=False, **kwargs)

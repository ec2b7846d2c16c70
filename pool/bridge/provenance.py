"""The note of an imported record: a marker plus where the run came from.

An imported record is signed by the importer, but it states someone else's run. Its note starts
with MARKER, so every node (the importer's and its peers') can tell it from a run its author
measured and weigh it as an unverified claim (pool/estimator.py) until it is reproduced.

Format (at most 280 characters, no control characters):
    "imported-record " + space-separated key=value pairs, values percent-encoded (so a folder
    name with spaces stays one token): track, folder, github, pr (when known), log.
`parse_note` returns None for a note without the marker and never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote, unquote

MARKER = "imported-record"
IMPORTED_AUTHOR_PREFIX = "imported:"  # evidence author of an imported claim: prefix + importer key
_MAX_NOTE = 280
_KEYS = ("track", "folder", "github", "pr", "log", "seed")


def make_note(fields: Mapping[str, object]) -> str:
    """The note for an imported record; long values are cut so the note fits 280 characters."""
    parts = [MARKER]
    for key in _KEYS:
        value = fields.get(key)
        if value is None or value == "":
            continue
        parts.append(f"{key}={quote(str(value), safe='._-:+@#/')}")
    note = " ".join(parts)
    while len(note) > _MAX_NOTE and len(parts) > 1:
        # shorten the longest value first; the marker itself always stays
        i = max(range(1, len(parts)), key=lambda j: len(parts[j]))
        key, _, value = parts[i].partition("=")
        room = len(value) - (len(note) - _MAX_NOTE) - 1
        parts[i] = f"{key}={value[:max(room, 0)]}~" if room > 8 else ""
        parts = [p for p in parts if p]
        note = " ".join(parts)
    return note


def parse_note(note: str) -> dict[str, str] | None:
    """The provenance fields of an imported record's note, or None if it is not one."""
    if not isinstance(note, str) or not (note == MARKER or note.startswith(MARKER + " ")):
        return None
    out: dict[str, str] = {}
    for token in note.split()[1:]:
        key, sep, value = token.partition("=")
        if sep:
            out[key] = unquote(value)
    return out


def is_imported(note: str) -> bool:
    """True if `note` marks its record as imported from a competition folder."""
    return parse_note(note) is not None


def imported_author(importer: str) -> str:
    """The evidence author standing for "claimed by importer, run by someone else"."""
    return IMPORTED_AUTHOR_PREFIX + importer


def importer_of(author: str) -> str | None:
    """The importer key behind an `imported_author` string, or None for an ordinary author."""
    return author[len(IMPORTED_AUTHOR_PREFIX):] if author.startswith(IMPORTED_AUTHOR_PREFIX) else None

"""The one error type the protocol raises for bad input.

Every decoder and validator in `protocol/` raises only `ProtocolError` for input it rejects,
with a message that names the field and the rule, so callers (the gossip validator, the
importer, the command line) can catch one type and report it.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Input that does not meet the wire contract. `field` names where, when known."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)

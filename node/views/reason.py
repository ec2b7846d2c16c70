"""Why the research loop chose an experiment, in one line for a person (join's live view,
`status --json`'s `why`). Pure: reads the proposal only."""

from __future__ import annotations

from typing import Any


def proposal_reason(p: Any) -> str:
    """The operator's reason, from the proposal's own fields: a proposer's stated reason when it
    carries one (`reason` or `rationale`), else what the operator did with which records."""
    for name in ("reason", "rationale"):
        text = getattr(p, name, None)
        if isinstance(text, str) and text.strip():
            return " ".join(text.split())[:200]
    op = getattr(p, "operator", "")
    parents = [r[:8] for r in getattr(p, "parents", ())]
    if op == "mutate" and getattr(p, "changed", ()):
        moves = ", ".join(f"{k}={v}" for k, v in p.changed)
        return f"moves {moves} from record {parents[0] if parents else '?'}"
    if op == "recombine":
        return f"unites the diffs of records {' and '.join(parents)}"
    if op == "replicate":
        return f"re-measures the leader (record {(p.subject or '?')[:8]}) with a new seed"
    if op == "try_peer":
        return f"tries a peer's claim here (record {p.subject[:8]})" if getattr(p, "subject", None) else "measures the base config (nothing to build on yet)"
    return op

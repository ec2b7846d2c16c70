"""A proposer's answer, read as untrusted data and checked exactly as a peer's diff is.

The answer is one JSON object:

    {"proposals": [{"base": "naive-baseline" | "script": "<sha256>", "diff": {...},
                    "parents": ["<record id>", ...], "tokenizer": "sp1024", "rationale": "one line"}],
     "usage": {"tokens": 1234}}

Each proposal becomes a pool.proposals.Proposal only if its (base, diff) passes the wire's own
check (protocol.candidates.normalise_diff then check_normalised, which a record from a peer
passes; a script's diff also through its ScriptVocabulary.check_diff, as for a peer's script
record once the script is held), its base may run here, its tokenizer is a tokenizer name, its
parents are records this pool holds, and its rationale is one line of at most RATIONALE_CHARS.
Anything else is dropped with a one-line reason; nothing in an answer is ever executed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pgolf.pool.proposals import Proposal
from p2pgolf.protocol import candidates
from p2pgolf.protocol.errors import ProtocolError

MAX_PROPOSALS = 16  # more are dropped unread
MAX_PARENTS = 8
REASON_CHARS = 300  # a dropped proposal's reason is cut to this (a value in it may be huge)
RATIONALE_CHARS = 200  # the record's note holds 280; the rest says who proposed it
PROPOSAL_KEYS = {"base", "script", "diff", "parents", "tokenizer", "rationale"}


@dataclass
class Answer:
    """What an answer held: checked proposals, rationale per candidate, drops and reported usage."""

    proposals: list[Proposal] = field(default_factory=list)
    rationale: dict[str, str] = field(default_factory=dict)  # candidate id -> rationale
    dropped: list[str] = field(default_factory=list)  # one reason per dropped proposal (or the whole answer)
    tokens: int = 0


def read_answer(
    raw: bytes,
    operator: str,
    *,
    tokenizer: str,
    runnable: Callable[[str], bool],
    vocabularies: Mapping[str, Any],
    known_record: Callable[[str], bool],
) -> Answer:
    """Parse and check `raw`; never raises for bad input (the reasons are in `dropped`)."""
    out = Answer()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        out.dropped.append(f"answer is not JSON: {str(exc)[:120]}")
        return out
    except RecursionError:
        out.dropped.append("answer is nested too deeply to read")
        return out
    if not isinstance(doc, dict) or not isinstance(doc.get("proposals", []), list):
        out.dropped.append('answer must be an object with a "proposals" list')
        return out
    usage = doc.get("usage")
    if isinstance(usage, dict) and type(usage.get("tokens")) is int and 0 <= usage["tokens"] < 2**40:
        out.tokens = usage["tokens"]
    items = doc.get("proposals", [])
    if len(items) > MAX_PROPOSALS:
        out.dropped.append(f"{len(items) - MAX_PROPOSALS} proposals beyond the first {MAX_PROPOSALS} were not read")
        items = items[:MAX_PROPOSALS]
    for k, item in enumerate(items):
        try:
            p, why = _proposal(item, operator, tokenizer, runnable, vocabularies, known_record)
        except ProtocolError as exc:
            out.dropped.append(f"proposal {k}: {str(exc)[:REASON_CHARS]}")
            continue
        if p.candidate in out.rationale:
            out.dropped.append(f"proposal {k}: the same candidate as an earlier one")
            continue
        out.proposals.append(p)
        out.rationale[p.candidate] = why
    return out


def _proposal(item: Any, operator: str, default_tokenizer: str, runnable, vocabularies, known_record) -> tuple[Proposal, str]:
    if not isinstance(item, dict):
        raise ProtocolError("must be an object")
    extra = sorted(str(k) for k in set(item) - PROPOSAL_KEYS)
    if extra:
        raise ProtocolError(f"unknown field(s) {', '.join(extra)[:100]}; expected some of {', '.join(sorted(PROPOSAL_KEYS))}")
    if ("base" in item) == ("script" in item):
        raise ProtocolError('exactly one of "base" (a built-in base config) or "script" (a script sha256) is needed')
    base = candidates.script_base(item["script"]) if "script" in item else item["base"]
    if type(base) is not str:
        raise ProtocolError("must be a string", "base")
    tokenizer = candidates.check_tokenizer(item.get("tokenizer", default_tokenizer))
    diff = item.get("diff", {})
    if not isinstance(diff, dict):
        raise ProtocolError("must be a map of names to values", "diff")
    if candidates.is_script_base(base):
        vocab = vocabularies.get(base)
        if vocab is None or not runnable(base):
            raise ProtocolError(f"script {base[7:19]} is not approved on this node", "script")
        normal = vocab.check_diff(diff)
    else:
        normal = candidates.normalise_diff(base, diff)
        if not runnable(base):
            raise ProtocolError(f"base {base!r} does not run on this node", "base")
    candidates.check_normalised(base, normal)  # the check a peer's record passes on the wire
    parents = item.get("parents", [])
    if not isinstance(parents, list) or len(parents) > MAX_PARENTS:
        raise ProtocolError(f"must be a list of at most {MAX_PARENTS} record ids", "parents")
    for rid in parents:
        if type(rid) is not str or not known_record(rid):
            raise ProtocolError(f"{str(rid)[:70]!r} is not a record this pool holds", "parents")
    rationale = item.get("rationale", "")
    if type(rationale) is not str:
        raise ProtocolError("must be a string", "rationale")
    rationale = " ".join(rationale.split())  # one line
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in rationale):
        raise ProtocolError("control characters are not allowed", "rationale")
    if len(rationale) > RATIONALE_CHARS:
        rationale = rationale[: RATIONALE_CHARS - 3] + "..."
    cid = candidates.candidate_id(base, normal, tokenizer)
    return Proposal(base, normal, tuple(sorted(set(parents))), operator, None, (), cid, tokenizer), rationale

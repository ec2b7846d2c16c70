"""The situation document a proposer reads on stdin: one JSON object, data only.

Fields (version 1): `benchmark` (name, id, budget_s, tokenizer), `hardware` (this node's class),
`knobs` (the vocabulary of protocol/knobs.py: name, type, range or choices, default, meaning),
`bases` (built-in base configs that run here), `scripts` (approved scripts' hyperparameters from
protocol/script_hparams.py), `incumbent`, `leaders` (estimates with sd, how established here,
support, lineage), `untested` (peers' candidates not yet established here, with their claims),
`recent` (this node's latest experiments: operator, outcome, gain, rationale), `peer_notes`
(notes of peers' records, verbatim: strings from peers are data), `usage` (this proposer's
requests and tokens today) and `answer` (the form and limits of an answer, see answer.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from p2pgolf.node.proposers.answer import MAX_PROPOSALS, RATIONALE_CHARS
from p2pgolf.protocol import knobs

VERSION = 1
MAX_LEADERS = 10
MAX_UNTESTED = 20
MAX_RECENT = 30
MAX_NOTES = 40


def situation(
    post: Any,
    *,
    bench: Any,
    hw: str,
    starts: Sequence[Mapping[str, Any]],
    ends: Mapping[int, Mapping[str, Any]],
    peer_records: Sequence[Any],
    me: str,
    vocabularies: Mapping[str, Any],
    bases: Sequence[str],
    usage: Mapping[str, Any],
) -> dict[str, Any]:
    """The document for one request (see the module docstring)."""
    order = [post.candidates[i] for i in np.argsort(post.mean, kind="stable")] if post.candidates else []

    def describe(c: str) -> dict[str, Any]:
        info = post.info[c]
        est = post.estimate(c)
        return {
            "candidate": c, "record": info.representative, "base": info.base, "diff": dict(info.diff), "tokenizer": info.tokenizer,
            "mean_bpb": round(float(est.mean), 6), "sd_bpb": round(float(est.sd), 6), "established_here": round(float(info.established), 3),
            "support": round(float(info.support), 3), "measured_on": list(info.hw_classes), "results": info.n_results,
            "parents": list(info.parents), "lineage": sorted(post.ancestors(c, limit=16)),
        }  # fmt: skip

    established = [c for c in order if post.info[c].established >= post.established_weight]
    untested = [c for c in order if post.info[c].established < post.established_weight and post.info[c].base]
    recent = []
    for s in list(starts)[-MAX_RECENT:]:
        e = ends.get(s["n"], {})
        recent.append({
            "n": s["n"], "operator": s["operator"], "candidate": s["candidate"], "base": s["base"], "diff": s["diff"],
            "parents": s["parents"], "rationale": s.get("rationale", ""), "status": e.get("status", "running"),
            "gain_bpb": e.get("gain", 0.0), "beat_incumbent": bool(e.get("won", False)), "record": e.get("record"),
        })  # fmt: skip
    notes = []
    for signed in peer_records:
        r = signed.record
        if signed.author == me or not getattr(r, "note", ""):
            continue
        notes.append({"record": signed.id, "author": signed.author, "candidate": getattr(r, "candidate", None), "note": r.note, "val_bpb": float(r.metrics.val_bpb)})
        if len(notes) >= MAX_NOTES:
            break
    inc = post.incumbent() if post.candidates else None
    return {
        "v": VERSION,
        "benchmark": {"name": bench.name, "id": bench.id, "budget_s": bench.budget_s, "tokenizer": bench.tokenizer},
        "hardware": hw,
        "knobs": [_knob(k) for k in knobs.KNOBS.values()],
        "bases": list(bases),
        "scripts": [_script(base, vocab) for base, vocab in sorted(vocabularies.items())],
        "incumbent": describe(inc) if inc else None,
        "leaders": [describe(c) for c in established[:MAX_LEADERS]],
        "untested": [describe(c) for c in untested[:MAX_UNTESTED]],
        "recent": recent,
        "peer_notes": notes,
        "usage": dict(usage),
        "answer": {
            "form": {"proposals": [{"base": "BASE or omit", "script": "SHA256 or omit", "diff": {}, "parents": ["record id"], "tokenizer": bench.tokenizer, "rationale": "one line"}], "usage": {"tokens": 0}},
            "max_proposals": MAX_PROPOSALS,
            "rationale_chars": RATIONALE_CHARS,
        },
    }


def _knob(k: Any) -> dict[str, Any]:
    out = {"name": k.name, "type": k.type.__name__, "default": k.default, "meaning": k.help, "group": k.group}
    if k.choices:
        out["choices"] = list(k.choices)
    if k.low is not None or k.high is not None:
        out["range"] = [k.low, k.high]
        out["log_scale"] = k.log_scale
    return out


def _script(base: str, vocab: Any) -> dict[str, Any]:
    params = []
    for name, p in sorted(vocab.params.items()):
        params.append({"name": name, "type": p.type.__name__, "default": p.default, "range": [p.low, p.high], "searchable": p.searchable})
    return {"script": base.split(":", 1)[1], "hyperparameters": params}

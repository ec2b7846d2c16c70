#!/usr/bin/env python3
"""A scripted proposer for `p2pgolf join --proposer heuristics="python3 examples/proposers/scripted.py"`.

Plain heuristics over the situation the node sends on stdin (node/proposers/situation.py):
1. port the best untested peer idea to this hardware: the candidate peers measured that is not
   established here and whose claim (hardware-adjusted by the node's estimate) is lowest;
2. combine the two best lineages: the union of the diffs of the two best candidates of one base
   that are not one another's ancestors (on a conflict the better one's value wins).
Candidates this node already ran are skipped. Standard library only; reads stdin, writes one
JSON answer on stdout, nothing else.
"""

from __future__ import annotations

import json
import sys


def propose(situation: dict) -> list[dict]:
    tried = {r["candidate"] for r in situation.get("recent", [])}
    tried_configs = {json.dumps([r["base"], r["diff"]], sort_keys=True) for r in situation.get("recent", [])}
    incumbent = situation.get("incumbent")
    best_here = incumbent["mean_bpb"] if incumbent else float("inf")
    untested = [c for c in situation.get("untested", []) if c["candidate"] not in tried and c.get("record")]
    untested.sort(key=lambda c: c["mean_bpb"])
    port = None
    if untested:
        c = untested[0]
        port = {
            "base": c["base"], "diff": c["diff"], "tokenizer": c["tokenizer"], "parents": [c["record"]],
            "rationale": f"port peer idea {c['candidate'][:8]} (estimated {c['mean_bpb']:.4f} here, measured on {', '.join(c['measured_on'])[:60]}) to this hardware",
        }  # fmt: skip
    combine = _combine(situation, tried_configs)
    # the more promising first: a port whose estimate beats the incumbent, else the combination
    if port and (not combine or untested[0]["mean_bpb"] < best_here):
        out = [port] + ([combine] if combine else [])
    else:
        out = ([combine] if combine else []) + ([port] if port else [])
    return out


def _combine(situation: dict, tried_configs: set) -> dict | None:
    pool = [c for c in situation.get("leaders", []) + situation.get("untested", []) if c.get("record") and not c["base"].startswith("script:")]
    pool.sort(key=lambda c: c["mean_bpb"])
    for i, a in enumerate(pool):
        for b in pool[i + 1 :]:
            if a["base"] != b["base"] or a["candidate"] in b["lineage"] or b["candidate"] in a["lineage"]:
                continue
            diff = {**b["diff"], **a["diff"]}  # a is the better: its values win
            if diff == a["diff"] or diff == b["diff"]:
                continue
            key = json.dumps([a["base"], diff], sort_keys=True)
            if key in tried_configs:
                continue
            return {
                "base": a["base"], "diff": diff, "tokenizer": a["tokenizer"], "parents": [a["record"], b["record"]],
                "rationale": f"combine lineages {a['candidate'][:8]} ({a['mean_bpb']:.4f}) and {b['candidate'][:8]} ({b['mean_bpb']:.4f})",
            }  # fmt: skip
    return None


def main() -> None:
    situation = json.load(sys.stdin)
    json.dump({"proposals": propose(situation), "usage": {"tokens": 0}}, sys.stdout)


if __name__ == "__main__":
    main()

"""Scripts travel: a node that holds records of a script it lacks fetches the script's bytes.

`fetch_new_scripts(node, scripts)` looks through the pool's results (the node's benchmarks) for
script candidates (`script:<sha256>`) whose bytes this node does not hold, asks the blob
exchange for each (the record's author's node first; kind "script", so capped at the store's
script cap, 1 MiB; verified by SHA-256 before anything is kept: a corrupted or substituted
transfer is refused), indexes it in the script store as "fetched" from that peer, and tells the
user once: which script, used by whom, with what results, and that it will not run until
approved. A fetched script is never approved by fetching: only `p2pgolf script approve` does
that. `script_fetch_loop` runs this whenever new records arrive (at most every `min_gap_s`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScriptInUse:
    """What the pool says about a script: who reported results with it, how many, the best."""

    sha: str
    authors: tuple[str, ...]  # public keys, most results first
    results: int
    best_bpb: float


@dataclass(frozen=True)
class FetchedScript:
    usage: ScriptInUse
    from_author: str | None
    hyperparameters: int


def scripts_in_use(store: Any, bench_ids) -> dict[str, ScriptInUse]:
    """Every script named by a result in the pool for these benchmarks."""
    from p2pgolf.protocol.candidates import is_script_base, script_sha

    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    best: dict[str, float] = {}
    for bench in sorted(bench_ids):
        for signed in store.script_results(bench):
            r = signed.record
            if not is_script_base(r.base):
                continue
            sha = script_sha(r.base)
            counts[sha][r.author] += 1
            best[sha] = min(best.get(sha, float("inf")), float(r.metrics.val_bpb))
    return {
        sha: ScriptInUse(sha, tuple(sorted(by, key=lambda a: (-by[a], a))), sum(by.values()), best[sha])
        for sha, by in counts.items()
    }


async def fetch_new_scripts(node: Any, scripts: Any, *, timeout_s: float = 60.0, skip: set[str] | None = None) -> list[FetchedScript]:
    """Fetch the scripts the pool names and this node lacks; returns what was fetched.
    A script no peer can deliver (or that does not hash to its name) is logged and, when
    `skip` is given, remembered there so it is not asked for again at once."""
    from p2pgolf.node.blob_exchange import BlobFetchError
    from p2pgolf.node.scripts import ScriptStoreError
    from p2pgolf.pool.blobs import BlobError
    from p2pgolf.protocol.errors import ProtocolError

    fetched = []
    # In a thread: it parses every result in the pool (100,000 after a catch-up), which inside
    # trio's thread froze the node for seconds at a time.
    in_use = await trio.to_thread.run_sync(scripts_in_use, node.store, node.bench_ids)
    for sha, usage in sorted(in_use.items()):
        if scripts.has(sha) or (skip is not None and sha in skip):
            continue
        author = usage.authors[0] if usage.authors else None
        try:
            path = await node.fetch_blob(sha, kind="script", author=author, timeout_s=timeout_s)
            data = path.read_bytes()
            entry, vocab = scripts.add_bytes(data, name=f"fetched-{sha[:12]}.py", origin="fetched", source=_peer(author))
        except (BlobFetchError, BlobError, ScriptStoreError, ProtocolError, OSError) as exc:
            log.info("script %s is used in the pool but could not be fetched: %s", sha[:12], exc)
            if skip is not None:
                skip.add(sha)
            continue
        who = ", ".join(_peer(a)[:16] for a in usage.authors[:3]) + (f" and {len(usage.authors) - 3} more" if len(usage.authors) > 3 else "")
        log.warning(
            "new script in use: %s, %d result(s) by %s, best val_bpb %.4f; fetched (%d hyperparameters). "
            "It will not run here until you read it (p2pgolf script show %s) and approve it (p2pgolf script approve %s)",
            sha[:12], usage.results, who, usage.best_bpb, len(vocab), sha[:12], sha[:12],
        )  # fmt: skip
        fetched.append(FetchedScript(usage, author, len(vocab)))
    return fetched


async def script_fetch_loop(node: Any, scripts: Any, *, min_gap_s: float = 5.0, idle_s: float = 60.0) -> None:
    """Run `fetch_new_scripts` when records arrive (and every `idle_s`), until cancelled."""
    skip: set[str] = set()
    rounds = 0
    while True:
        with trio.move_on_after(idle_s):
            await node.new_records.wait()
        rounds += 1
        if rounds % 10 == 0:
            skip.clear()  # try undeliverable scripts again now and then
        try:
            await fetch_new_scripts(node, scripts, skip=skip)
        except Exception as exc:  # a damaged index must not stop the node
            log.warning("script fetch failed: %s", exc)
        await trio.sleep(min_gap_s)


def _peer(author: str | None) -> str:
    if not author:
        return ""
    from p2pgolf.protocol.identity import peer_id_from_public_key

    try:
        return peer_id_from_public_key(bytes.fromhex(author))
    except Exception:
        return author

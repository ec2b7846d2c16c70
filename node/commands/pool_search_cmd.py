"""`p2pgolf pool explain` and `p2pgolf pool top`: the estimator's view of the pool.

`explain CANDIDATE` prints every piece of evidence that went into the candidate's estimate for
this node's hardware (its weight, how it was translated from other hardware, the attestation
verdicts on it) and the resulting posterior. `top` lists the best candidates for this hardware
with their uncertainty. Both read the pool only; `--json` prints one JSON document. This
node's hardware class comes from trainer.hardware (imported only when `--hw` is not given).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.home import Home

if TYPE_CHECKING:
    from p2pgolf.pool.estimator import Posterior
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore


@click.command("explain")
@click.argument("candidate")
@click.option("--bench", help="Benchmark name or id (default: the benchmark of the candidate's records).")
@click.option("--hw", "hw_key", help="Hardware class key to estimate for (default: this machine's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def explain(home: Home, candidate: str, bench: str | None, hw_key: str | None, as_json: bool) -> None:
    """Explain the estimate for CANDIDATE (id or unique prefix) on this hardware."""
    from p2pgolf.node.commands.pool_cmd import _resolve_candidate, open_pool, open_trust, resolve_bench

    with open_pool(home) as store:
        trust = open_trust(store)
        cid = _resolve_candidate(store, candidate)
        if bench:
            bench_id = resolve_bench(bench)
        else:
            benches = sorted({r.bench for r in store.query(candidate=cid, kind="result")})
            if len(benches) > 1:
                raise UserError(f"candidate {cid[:12]} has results on {len(benches)} benchmarks; choose one with --bench")
            bench_id = benches[0]
        hw = hw_key or _this_hardware()
        post = _posterior(store, trust, bench_id, hw)
        if cid not in post:
            raise UserError(f"candidate {cid[:12]} has no usable evidence on this benchmark (all of it from blocked keys, or none)")
        doc = _explain_doc(post, cid, bench_id, trust)
        _add_provenance(doc, store, home)
    if as_json:
        click.echo(json.dumps(doc, sort_keys=True))
        return
    _print_explain(doc)


@click.command("top")
@click.option("--bench", help="Benchmark name or id (default: the one with the most records).")
@click.option("--hw", "hw_key", help="Hardware class key to rank for (default: this machine's).")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True, help="How many candidates.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_obj
def top(home: Home, bench: str | None, hw_key: str | None, limit: int, as_json: bool) -> None:
    """List the best candidates for this hardware, with their uncertainty."""
    from p2pgolf.node.commands.pool_cmd import open_pool, open_trust, resolve_bench

    with open_pool(home) as store:
        trust = open_trust(store)
        if bench:
            bench_id = resolve_bench(bench)
        else:
            benches = store.benches()
            if not benches:
                raise UserError("the pool is empty: nothing to rank")
            bench_id = max(benches, key=lambda b: b[1])[0]
        hw = hw_key or _this_hardware()
        post = _posterior(store, trust, bench_id, hw)
    script_state = _script_states(home)
    incumbent = post.incumbent()
    rows = []
    for rank, est in enumerate(post.ranked()[:limit], start=1):
        info = post.info[est.candidate]
        rows.append(
            {
                "rank": rank,
                "candidate": est.candidate,
                "mean": est.mean,
                "sd": est.sd,
                "established_here": info.established,
                "results": info.n_results,
                "incumbent": est.candidate == incumbent,
                "base": info.base,
                "diff": dict(info.diff),
                "tokenizer": info.tokenizer,
                "kind": "script" if info.is_script else "builtin",
                "script": script_state(info.base),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, sort_keys=True))
        return
    _print_top(rows, hw, bench_id, len(post.candidates))


# ----------------------------------------------------------------------------- helpers


def _script_states(home: Home):
    """base -> None for built-ins, else "approved", "held" (not approved) or "not held" here."""
    from p2pgolf.node.scripts import ScriptStore
    from p2pgolf.protocol.candidates import is_script_base, script_sha

    store = ScriptStore(home)
    try:
        approved, held = set(store.approved()), {e.sha for e in store.entries()}
    except Exception:  # a damaged index must not hide the ranking
        approved, held = set(), set()

    def state(base: str) -> str | None:
        if not is_script_base(base):
            return None
        sha = script_sha(base)
        return "approved" if sha in approved else "held" if sha in held else "not held"

    return state


def _label(base: str, tokenizer: str, script: str | None) -> str:
    """How a candidate's base reads in a table: built-in name, or script:<sha prefix> (state)."""
    if script is None:
        return base if tokenizer in ("sp1024", "byte256") else f"{base} ({tokenizer})"
    return f"script:{base.split(':', 1)[1][:10]} ({tokenizer}, {script})"  # parentheses: rich reads [..] as markup


def _this_hardware() -> str:
    try:
        from p2pgolf.trainer.hardware import detect_hardware
    except ImportError as exc:
        raise UserError(f"cannot detect this machine's hardware ({exc}); give --hw KEY") from None
    try:
        return detect_hardware().key
    except Exception as exc:  # detection reads the system; any failure is the user's to route around
        raise UserError(f"cannot detect this machine's hardware ({exc}); give --hw KEY") from None


def _posterior(store: "PoolStore", trust: "TrustStore", bench_id: str, hw: str) -> "Posterior":
    from p2pgolf.pool.estimator import estimate
    from p2pgolf.pool.evidence import from_store
    from p2pgolf.pool.trust_weights import TrustPolicy

    evidence = from_store(store, bench_id)
    return estimate(evidence, trust.status, hw, policy=TrustPolicy(unknown_weight=trust.unknown_weight))


def _explain_doc(post: "Posterior", cid: str, bench_id: str, trust: "TrustStore") -> dict[str, Any]:
    est = post.estimate(cid)
    info = post.info[cid]
    labels = trust.labels()
    rows = []
    for r in sorted(post.rows.get(cid, []), key=lambda r: (r.hw != post.hw, -r.claim * r.cap, r.record_id)):
        rows.append(
            {
                "record": r.record_id,
                "kind": r.kind,
                "author": r.author,
                "who": _who(r.author, labels.get(r.author, ""), r.status),
                "status": r.status,
                "hw": r.hw,
                "val_bpb": r.val_bpb,
                "on_this_hw": r.translated,
                "trust": r.trust,
                "claim_weight": r.claim,
                "cap": r.cap,
                "sd": r.sd,
                "verdicts": list(r.verdicts),
            }
        )
    parents = [{"candidate": p, "mean": post.estimate(p).mean, "sd": post.estimate(p).sd} for p in info.parents]
    translations = {
        h: {"offset": t.offset, "offset_sd": t.offset_sd, "scale": t.scale, "overlaps": t.overlaps, "interaction_sd": t.interaction_sd}
        for h, t in post.translations.items()
        if h in info.hw_classes or any(r["hw"] == h for r in rows)
    }
    return {
        "candidate": cid,
        "bench": bench_id,
        "hw": post.hw,
        "base": info.base,
        "diff": dict(info.diff),
        "tokenizer": info.tokenizer,
        "kind": "script" if info.is_script else "builtin",
        "mean": est.mean,
        "sd": est.sd,
        "established_here": info.established,
        "incumbent": post.incumbent() == cid,
        "parents": parents,
        "evidence": rows,
        "translations": translations,
        "interaction_sd": post.interaction_sd,
    }


def _add_provenance(doc: dict[str, Any], store: "PoolStore", home: Home) -> None:
    """Where each imported claim came from (its note), and the built-in candidate an imported
    script configuration amounts to, when the import found one (imports/<candidate>.json)."""
    from p2pgolf.node.commands.import_record_cmd import read_sidecar
    from p2pgolf.pool.bridge.provenance import importer_of, parse_note

    for row in doc["evidence"]:
        importer = importer_of(row["author"])
        rec = store.get(row["record"]) if importer is not None else None
        row["imported"] = None if rec is None else {"by": importer, **(parse_note(rec.record.note) or {})}
        if rec is not None:
            row["who"] = f"imported by {'me' if importer == _own_key(store) else importer[:8]}"
    side = read_sidecar(home, doc["candidate"])
    doc["builtin_equivalent"] = None
    if side and side.get("builtin_equivalent"):
        from p2pgolf.protocol import candidates

        eq = side["builtin_equivalent"]
        doc["builtin_equivalent"] = {**eq, "candidate": candidates.candidate_id(eq["base"], eq["diff"], eq.get("tokenizer", "sp1024"))}
    elif side:
        doc["builtin_reason"] = side.get("builtin_reason", "")


def _own_key(store: "PoolStore") -> str | None:
    from p2pgolf.pool.trust import TrustStore

    own = [e.key for e in TrustStore(store).entries() if e.status == "own"]
    return own[0] if own else None


def _who(key: str, label: str, status: str) -> str:
    name = "me" if status == "own" else (label or key[:8])
    return f"{name} ({status})" if status != "own" else name


def _print_explain(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    diff = ", ".join(f"{k}={v}" for k, v in doc["diff"].items()) or "(no changes)"
    console.print(f"candidate {doc['candidate']}")
    console.print(f"  {doc['base']} + {diff} (tokenizer {doc['tokenizer']})")
    marker = "  [bold](incumbent)[/bold]" if doc["incumbent"] else ""
    console.print(f"  estimate on {doc['hw']}: [bold]{doc['mean']:.4f} ± {doc['sd']:.4f}[/bold] val_bpb{marker}")
    if not doc["evidence"]:
        console.print("  no direct evidence: the estimate comes from its parents (lineage prior)")
    table = Table(title="evidence", title_justify="left")
    for name, justify in (("record", "left"), ("kind", "left"), ("author", "left"), ("hw", "left"), ("val_bpb", "right"), ("on this hw", "right"), ("trust", "right"), ("claim", "right"), ("cap", "right"), ("sd", "right"), ("checks", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in doc["evidence"]:
        table.add_row(r["record"][:12], r["kind"], r["who"], r["hw"], f"{r['val_bpb']:.4f}", f"{r['on_this_hw']:.4f}", f"{r['trust']:.3g}", f"{r['claim_weight']:.3g}", f"{r['cap']:.3g}", f"{r['sd']:.4f}", "\n".join(r["verdicts"]))
    console.print(table)
    for r in doc["evidence"]:
        if r.get("imported"):
            i = r["imported"]
            where = ", ".join(f"{k} {i[k]}" for k in ("track", "folder", "github", "pr", "log", "seed") if i.get(k))
            console.print(f"  {r['record'][:12]} is an imported claim (unverified until reproduced): {where}")
    if doc.get("builtin_equivalent"):
        eq = doc["builtin_equivalent"]
        diff = ", ".join(f"{k}={v}" for k, v in eq["diff"].items()) or "(no changes)"
        console.print(f"  equivalent built-in candidate {eq['candidate'][:12]}: {eq['base']} + {diff}")
    elif doc.get("builtin_reason"):
        console.print(f"  no equivalent built-in candidate: {doc['builtin_reason']}")
    for p in doc["parents"]:
        console.print(f"  parent {p['candidate'][:12]}: {p['mean']:.4f} ± {p['sd']:.4f}")
    for h, t in doc["translations"].items():
        console.print(f"  {h} -> this hw: offset {t['offset']:+.4f} ± {t['offset_sd']:.4f}, scale {t['scale']:.3f}, ranking disagreement sd {t['interaction_sd']:.4f}, from {t['overlaps']} shared candidates")


def _print_top(rows: list[dict[str, Any]], hw: str, bench_id: str, total: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from p2pgolf.node.commands.pool_cmd import bench_label

    table = Table(title=f"best of {total} candidates on {bench_label(bench_id)} for {hw}", title_justify="left")
    for name, justify in (("#", "right"), ("candidate", "left"), ("val_bpb", "right"), ("± sd", "right"), ("here", "right"), ("results", "right"), ("diff", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in rows:
        label = _label(r["base"], r["tokenizer"], r["script"])
        diff = label + (": " + ", ".join(f"{k}={v}" for k, v in r["diff"].items()) if r["diff"] else "")
        mark = " *" if r["incumbent"] else ""
        table.add_row(str(r["rank"]), r["candidate"][:12] + mark, f"{r['mean']:.4f}", f"{r['sd']:.4f}", f"{r['established_here']:.2g}", str(r["results"]), diff)
    Console().print(table)
    if any(r["incumbent"] for r in rows):
        Console().print("* incumbent: best among those measured on this hardware by trusted keys")

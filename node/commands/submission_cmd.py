"""`p2pgolf submission CANDIDATE --out DIR`: a pool candidate as a Parameter Golf record folder.

Checks the challenge's rules on the pool's evidence (pool/submission_rules.py: size, budget,
>= 3 seeds on the track's hardware from own or pinned keys, the one-sided significance test
against `--against BPB` or the best imported record of the track) and prints each with its
numbers. When a rule fails nothing is written unless `--draft` is given (then the folder is
marked as a draft: DRAFT in the README title, `"draft": true` in submission.json).

The folder: README.md (candidate, lineage and who found each part, run command, per-seed table,
the test), submission.json in the track's schema, one log per seed (the run's own log when the
run directory is in this home, else the signed record's numbers, said to be so), and
train_gpt.py: for a script candidate the approved script (node/scripts.py: held by its sha256
and approved by the user; `--script FILE` adds the file if its hash matches, never approves it)
with the diff written in as its defaults (trainer/script_defaults.py).
For a built-in candidate, our trainer bundled into one file (trainer/bundle.py) and a
requirements.txt.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.home import Home

TRACK = "10min_16mb"
TRACK_BENCH = "parameter-golf/sp1024-10min"
TRACK_HW = "cuda:NVIDIA H100 80GB HBM3:x8"
TRACK_HW_LABEL = "8xH100"
TRACK_BUDGET_S = 600.0
RUN_COMMAND = "torchrun --standalone --nproc_per_node=8 train_gpt.py"


@click.command("submission")
@click.argument("candidate")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write (must not exist or be empty).")
@click.option("--against", type=float, help="Baseline val_bpb (default: the best imported record of the track).")
@click.option("--draft", is_flag=True, help="Write the folder even when a rule fails, marked as a draft.")
@click.option("--script", "script_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="The script file of a script candidate (checked against its sha256).")
@click.option("--bench", default=TRACK_BENCH, show_default=True, help="Benchmark of the track.")
@click.option("--hw", "hw_key", default=TRACK_HW, show_default=True, help="The track's hardware class.")
@click.option("--author", default="", help="Your name for submission.json.")
@click.option("--github-id", default="", help="Your GitHub id for submission.json.")
@click.option("--name", "title", default="", help="The record's name (default: from the candidate).")
@click.option("--json", "as_json", is_flag=True, help="Print the rule verdicts as one JSON object.")
@click.pass_obj
def submission(home: Home, candidate: str, out: Path, against: float | None, draft: bool, script_file: Path | None, bench: str,
               hw_key: str, author: str, github_id: str, title: str, as_json: bool) -> None:  # fmt: skip
    """Write CANDIDATE as a record folder for the 10min_16mb track, if the rules hold."""
    from p2pgolf.node.commands.pool_cmd import _resolve_candidate, open_pool, open_trust, resolve_bench
    from p2pgolf.pool.submission_rules import check_submission

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty directory; choose another --out")
    with open_pool(home) as store:
        trust = open_trust(store)
        bench_id = resolve_bench(bench)
        cid = _resolve_candidate(store, candidate)
        records = [r for r in store.query(candidate=cid, kind="result") if r.bench == bench_id]
        if not records:
            raise UserError(f"candidate {cid[:12]} has no results on {bench}")
        first = records[0].record
        script_text, script_rule = _train_script(home, first, script_file, bench)
        delta = _code_delta(home, first, script_text)
        runs, chosen = _seed_runs(records, trust, hw_key, delta)
        baseline, baseline_from = (against, "--against") if against is not None else _best_imported(store, bench_id, cid)
        lineage = _lineage(store, trust, chosen or records)
        labels = trust.labels()
        who = {rec.record.seed: _who(rec, trust, labels) for rec in chosen}
    from p2pgolf.pool.submission_rules import Rule

    rules, sig = check_submission(runs, hw=hw_key, hw_label=TRACK_HW_LABEL if hw_key == TRACK_HW else hw_key, budget_s=TRACK_BUDGET_S, baseline_bpb=baseline)
    rules.insert(0, script_rule)
    if script_text is not None:
        rules[1] = Rule("size", rules[1].ok, rules[1].detail + f" (with the {len(script_text.encode()):,}-byte train_gpt.py written here in place of the code the runs counted: {delta:+,} bytes)")
    failing = [r for r in rules if not r.ok]
    doc = {"candidate": cid, "rules": [{"rule": r.name, "ok": r.ok, "detail": r.detail} for r in rules], "baseline": baseline, "baseline_from": baseline_from, "written": False, "draft": draft}
    if not as_json:
        for r in rules:
            click.echo(f"{'ok  ' if r.ok else 'FAIL'} {r.name}: {r.detail}")
    if failing and not draft:
        if as_json:
            click.echo(json.dumps(doc))
        raise UserError(f"not written: {', '.join(r.name for r in failing)} failed ({failing[0].detail}); --draft writes it anyway, marked as a draft")
    _write_folder(out, home, cid, first, chosen, runs, rules, sig, lineage, script_text, draft=bool(failing) or draft, author=author, github_id=github_id, title=title, hw_key=hw_key, baseline=(baseline, baseline_from), who=who)
    doc["written"] = True
    doc["out"] = str(out)
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(f"wrote {out}{' (draft)' if failing or draft else ''}")


# ----------------------------------------------------------------------------- evidence


def _code_delta(home: Home, result, script_text: str | None) -> int:
    """Bytes the written train_gpt.py adds to each run's artifact+code over the code the run
    counted: our trainer's source files for a built-in run, the script itself for a script."""
    if script_text is None:
        return 0
    from p2pgolf.protocol.candidates import is_script_base, script_sha

    if is_script_base(result.base):
        from p2pgolf.node.scripts import ScriptStore

        old = len(ScriptStore(home).read_bytes(script_sha(result.base)))
    else:
        from p2pgolf.trainer.artifact import code_bytes

        old = code_bytes("torch")
    return len(script_text.encode()) - old


def _seed_runs(records, trust, hw_key, delta: int = 0):
    """One SeedRun per seed (own before pinned before others, newest first) and the chosen
    records; artifact bytes moved by `delta` (the code written instead of the code counted)."""
    from p2pgolf.pool.bridge.provenance import is_imported
    from p2pgolf.pool.submission_rules import SeedRun

    def trusted(rec) -> bool:
        return trust.status(rec.author) in ("own", "pinned") and not is_imported(rec.record.note)

    rank = {"own": 0, "pinned": 1}
    best: dict[int, Any] = {}
    for rec in sorted(records, key=lambda r: (not trusted(r), r.record.hw.key != hw_key, rank.get(trust.status(r.author), 2), -r.created_ms, r.id)):
        best.setdefault(rec.record.seed, rec)
    runs = [
        SeedRun(seed=s, val_bpb=r.record.metrics.val_bpb, val_loss=r.record.metrics.val_loss, artifact_bytes=r.record.metrics.artifact_bytes + delta,
                budget_s=r.record.budget_s, hw=r.record.hw.key, trusted=trusted(r))
        for s, r in sorted(best.items())
    ]  # fmt: skip
    return runs, [best[s] for s in sorted(best)]


def _best_imported(store, bench_id: str, own_candidate: str) -> tuple[float | None, str]:
    """The best (lowest mean over seeds) imported record of the track, other than ours."""
    from p2pgolf.pool.bridge.provenance import parse_note

    by_candidate: dict[str, list[float]] = {}
    folders: dict[str, str] = {}
    for rec in store.query(bench=bench_id, kind="result"):
        prov = parse_note(rec.record.note)
        if prov is None or prov.get("track") != TRACK or rec.record.candidate == own_candidate:
            continue
        by_candidate.setdefault(rec.record.candidate, []).append(rec.record.metrics.val_bpb)
        folders[rec.record.candidate] = prov.get("folder", "")
    if not by_candidate:
        return None, ""
    cid = min(by_candidate, key=lambda c: (sum(by_candidate[c]) / len(by_candidate[c]), c))
    return sum(by_candidate[cid]) / len(by_candidate[cid]), f"imported record {folders[cid]} ({cid[:12]})"


def _lineage(store, trust, records) -> list[dict[str, Any]]:
    """Ancestors of the representative record (oldest first), and who first had each diff entry."""
    rep = records[0]
    chain = [*store.lineage(rep.id).ancestors, rep]
    labels = trust.labels()
    out = []
    for rec in chain:
        who = _who(rec, trust, labels)
        out.append({"record": rec.id, "candidate": rec.record.candidate, "diff": dict(rec.record.diff), "who": who, "val_bpb": rec.record.metrics.val_bpb})
    return out


def _who(rec, trust, labels) -> str:
    """Who measured a record: me, a trust label or key prefix; an imported claim names its source."""
    from p2pgolf.pool.bridge.provenance import parse_note

    prov = parse_note(rec.record.note)
    if prov is not None:
        return f"{prov.get('github') or prov.get('folder') or 'a competition record'} (imported claim)"
    status = trust.status(rec.author)
    return "me" if status == "own" else (labels.get(rec.author) or rec.author[:8])


def _train_script(home: Home, result, script_file: Path | None, bench_name: str):
    """(train_gpt.py text or None, the "script" rule)."""
    from p2pgolf.pool.submission_rules import Rule
    from p2pgolf.protocol.candidates import is_script_base, script_sha

    if not is_script_base(result.base):
        if getattr(result, "tokenizer", "sp1024") != "sp1024":
            return None, Rule("script", False, f"built-in candidate with tokenizer {result.tokenizer}: the bundled trainer reads the challenge's sp1024 data only")
        from p2pgolf.trainer.bundle import bundle_source

        try:
            text = bundle_source(bench_name=bench_name, base=result.base, diff=dict(result.diff), seed=result.seed, budget_s=result.budget_s)
        except Exception as exc:  # a config the trainer refuses is a failing rule, named
            return None, Rule("script", False, f"cannot bundle the trainer for {result.base}: {exc}")
        return text, Rule("script", True, f"our trainer bundled into one file for {result.base} + {len(result.diff)} knob change(s)")
    from p2pgolf.node.scripts import ScriptStore, ScriptStoreError

    sha = script_sha(result.base)
    store = ScriptStore(home)
    if script_file is not None:
        data = script_file.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            return None, Rule("script", False, f"{script_file} has sha256 {hashlib.sha256(data).hexdigest()[:12]}, not the candidate's {sha[:12]}")
        try:
            store.add_bytes(data, name=script_file.name, origin="added", source=str(script_file.resolve()))
        except (ScriptStoreError, ValueError) as exc:
            return None, Rule("script", False, str(exc))
    if not store.has(sha):
        return None, Rule("script", False, f"the script {sha[:12]} is not held here; give --script FILE or `p2pgolf script add`")
    if not store.runnable(sha):
        return None, Rule("script", False, f"the script {sha[:12]} is not approved here (a submission runs it); review it and run `p2pgolf script approve {sha[:12]}`")
    try:
        data = store.read_bytes(sha)
    except ScriptStoreError as exc:
        return None, Rule("script", False, str(exc))
    from p2pgolf.trainer.script_defaults import ScriptRewriteError, write_defaults

    try:
        text = write_defaults(data, dict(result.diff))
    except (ScriptRewriteError, ValueError) as exc:
        return None, Rule("script", False, str(exc))
    return text, Rule("script", True, f"script {sha[:12]} with {len(result.diff)} hyperparameter(s) written in as defaults")


# ----------------------------------------------------------------------------- writing


def _write_folder(out: Path, home: Home, cid, result, chosen, runs, rules, sig, lineage, script_text, *, draft, author, github_id, title, hw_key, baseline, who) -> None:
    out.mkdir(parents=True, exist_ok=True)
    counted = [r for r in runs if r.trusted and r.hw == hw_key] or runs
    by_seed = {rec.record.seed: rec for rec in chosen}
    seeds = [r.seed for r in counted]
    code = script_text.encode() if script_text is not None else b""
    name = title or f"p2pgolf candidate {cid[:12]}"
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    seed_results = {}
    for r in counted:
        m = by_seed[r.seed].record.metrics
        seed_results[str(r.seed)] = {"val_loss": m.val_loss, "val_bpb": m.val_bpb, "artifact_bytes": r.artifact_bytes, "steps": m.steps}
    doc = {
        "author": author, "github_id": github_id, "name": name,
        "blurb": f"Found by p2pgolf: {result.base} with {len(result.diff)} change(s); {len(counted)} seeds.",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "track": TRACK,
        "val_loss": mean([r.val_loss for r in counted]), "val_bpb": mean([r.val_bpb for r in counted]),
        "bytes_total": max(r.artifact_bytes for r in counted), "bytes_code": len(code),
        "seeds": seeds, "seed_results": seed_results, "hardware": TRACK_HW_LABEL if hw_key == TRACK_HW else hw_key,
    }  # fmt: skip
    if draft:
        doc["draft"] = True
    (out / "submission.json").write_text(json.dumps(doc, indent=2) + "\n")
    if script_text is not None:
        (out / "train_gpt.py").write_text(script_text)
    from p2pgolf.protocol.candidates import is_script_base

    if not is_script_base(result.base):
        from p2pgolf.trainer.bundle import REQUIREMENTS

        (out / "requirements.txt").write_text(REQUIREMENTS)
    for r in counted:
        (out / f"train_seed{r.seed}.log").write_text(_seed_log(home, by_seed[r.seed]))
    (out / "README.md").write_text(_readme(cid, result, counted, by_seed, rules, sig, lineage, draft=draft, name=name, baseline=baseline, who=who))


def _seed_log(home: Home, rec) -> str:
    """The run's own log when its run directory is in this home, else the signed record's numbers."""
    for result_file in sorted(home.runs_dir.glob("*/result.json")) if home.runs_dir.is_dir() else []:
        try:
            res = json.loads(result_file.read_text())
        except (OSError, ValueError):
            continue
        m = res.get("metrics") or {}
        if res.get("seed") == rec.record.seed and res.get("base") == rec.record.base and m.get("val_bpb") == rec.record.metrics.val_bpb:
            log = result_file.parent / "log.txt"
            if log.is_file():
                return log.read_text()
    m = rec.record.metrics
    return (
        f"# No run log is held here; these are the numbers of signed record {rec.id} by {rec.author}.\n"
        f"seed:{rec.record.seed}\nhardware:{rec.record.hw.key}\nbudget_s:{rec.record.budget_s:g}\n"
        f"steps:{m.steps} train_tokens:{m.train_tokens}\nartifact_bytes:{m.artifact_bytes}\n"
        f"val_loss:{m.val_loss:.8f} val_bpb:{m.val_bpb:.8f}\n"
    )


def _readme(cid, result, counted, by_seed, rules, sig, lineage, *, draft, name, baseline, who) -> str:
    lines = [f"# {'DRAFT: ' if draft else ''}{name}", ""]
    if draft:
        lines += ["**Draft**: not every rule below holds; do not open a pull request from this folder as it is.", ""]
    diff = ", ".join(f"`{k}={v}`" for k, v in result.diff.items()) or "(none)"
    lines += [f"Candidate `{cid}`: base `{result.base}`, tokenizer `{getattr(result, 'tokenizer', 'sp1024')}`, changes {diff}.", ""]
    lines += ["## Lineage", "", "| record | who | changes | val_bpb |", "| --- | --- | --- | --- |"]
    for step in lineage:
        lines.append(f"| {step['record'][:12]} | {step['who']} | {', '.join(f'{k}={v}' for k, v in step['diff'].items()) or '(base)'} | {step['val_bpb']:.4f} |")
    finders = {}
    for k, v in result.diff.items():
        finders[k] = next((s["who"] for s in lineage if s["diff"].get(k) == v), lineage[-1]["who"])
    if finders:
        lines += ["", "Who found each part: " + "; ".join(f"`{k}` by {w}" for k, w in finders.items()) + "."]
    lines += ["", "## Run", "", "```bash", RUN_COMMAND, "```", "", "## Seeds", "",
              "| seed | val_bpb | val_loss | steps | step time (ms, budget/steps) | train budget (s) | artifact bytes | hardware | measured by |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in counted:
        rec = by_seed[r.seed].record
        m = rec.metrics
        step_ms = 1000 * rec.budget_s / m.steps if m.steps else 0
        lines.append(f"| {r.seed} | {m.val_bpb:.5f} | {m.val_loss:.5f} | {m.steps} | {step_ms:.1f} | {rec.budget_s:g} | {r.artifact_bytes:,} | {rec.hw.key} | {who[r.seed]} |")
    lines += ["", "Signed records carry the budget, not the measured train and eval times; the per-seed logs show those where the run's own log is held.", "", "## Rules", ""]
    for r in rules:
        lines.append(f"- {'pass' if r.ok else 'FAIL'} **{r.name}**: {r.detail}")
    if sig is not None:
        lines += ["", f"Significance: one-sided t-test on per-seed val_loss against {baseline[1]} ({baseline[0]:.5f} bpb = {sig.baseline_loss:.5f} nats): "
                  f"n={sig.n}, mean {sig.mean_loss:.5f}, sd {sig.sd_loss:.5f}, gain {sig.gain_nats:.5f} nats, t={sig.t:.3f}, p={sig.p:.3g}."]  # fmt: skip
    return "\n".join(lines) + "\n"

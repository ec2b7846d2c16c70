"""`p2pgolf pool import-record DIR...`: competition record folders -> signed results in the pool.

Each folder is read by pool/bridge (judgement-free parsing) into one result per seed it
supports, signed by this node's key with a provenance note that marks it as imported (the
estimator weighs it as an unverified claim until someone reproduces it). A folder is stored
whole or not at all: one that cannot be read gets one line naming the file and field, and the
other folders go on. The script (the file whose hyperparameters were run) goes
into the node's script store (node/scripts.py) by its sha256, not approved: it is evidence, and
runs (or is exported) only once the user approves that exact hash. What `pool explain` needs beyond the note (the equivalent built-in
candidate, the script's hash and file) is written to `imports/<candidate id>.json` in the home.
`--json` prints one object: per folder what was imported and what was refused and why.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.home import Home

IMPORTS_DIR = "imports"


@click.command("import-record")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a report per folder.")
@click.pass_obj
def import_record(home: Home, dirs: tuple[Path, ...], as_json: bool) -> None:
    """Import Parameter Golf record folders (records/<track>/<date>_<name>/) as results."""
    from p2pgolf.node.commands.pool_cmd import open_pool
    from p2pgolf.pool.bridge.errors import FolderError
    from p2pgolf.pool.bridge.importer import import_folder
    from p2pgolf.protocol.errors import ProtocolError
    from p2pgolf.protocol.identity import KeyFileError, load_identity
    from p2pgolf.protocol.signing import sign_record

    try:
        identity = load_identity(home.key_file)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    from p2pgolf.node.scripts import ScriptStore, ScriptStoreError

    scripts = ScriptStore(home)
    reports = []
    with open_pool(home) as store:
        for d in dirs:
            try:
                found = import_folder(d, identity.public_hex)
                signed = [sign_record(r, identity.signing_key) for r in found.records]
                # into the script store by its hash, never approved: only the user's `p2pgolf script approve` makes it runnable
                if not scripts.has(found.script_sha):  # many folders share a script: store (and fsync) it once
                    scripts.add_bytes(found.folder.script.read_bytes(), name=f"{found.folder.name}/{found.folder.script.name}", origin="added", source=str(found.folder.script.resolve()))
            except (FolderError, ProtocolError, OSError, ScriptStoreError) as exc:
                reports.append({"folder": str(d), "status": "refused", "reason": str(exc)})
                if not as_json:
                    click.echo(f"{d}: refused: {exc}", err=True)
                continue
            report = store.add_verified(signed)  # one transaction: the whole folder or nothing
            candidate = found.records[0].candidate
            _write_sidecar(home, candidate, found)
            reports.append({
                "folder": str(d), "status": "imported", "candidate": candidate, "script_sha256": found.script_sha,
                "records": [s.id for s in signed], "added": len(report.added), "already_present": len(report.duplicates),
                "seeds": [r.seed for r in found.records], "val_bpb": [r.metrics.val_bpb for r in found.records],
                "hardware": found.records[0].hw.key, "hardware_from": found.hardware_from, "skipped": list(found.skipped),
                "builtin_equivalent": {"base": found.builtin.base, "diff": found.builtin.diff, "candidate": found.builtin.candidate} if found.builtin.base else None,
                "builtin_reason": found.builtin.reason,
            })  # fmt: skip
            if not as_json:
                seeds = ", ".join(f"{r.seed}:{r.metrics.val_bpb:.4f}" for r in found.records)
                click.echo(f"{d}: imported {len(report.added)} new, {len(report.duplicates)} already present (seeds {seeds}; candidate {candidate[:12]})")
                for line in found.skipped:
                    click.echo(f"{d}: skipped {line}", err=True)
    refused = [r for r in reports if r["status"] == "refused"]
    if as_json:
        click.echo(json.dumps({"folders": reports, "imported": len(reports) - len(refused), "refused": len(refused)}))
    if refused:
        raise UserError(f"{len(refused)} of {len(reports)} folder(s) refused; the others were stored")


def sidecar_path(home: Home, candidate: str) -> Path:
    return home.root / IMPORTS_DIR / f"{candidate}.json"


def read_sidecar(home: Home, candidate: str) -> dict | None:
    """What the import of `candidate` wrote beside the pool, or None."""
    try:
        return json.loads(sidecar_path(home, candidate).read_text())
    except (OSError, ValueError):
        return None


def _write_sidecar(home: Home, candidate: str, found) -> None:
    path = sidecar_path(home, candidate)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        **found.provenance,
        "script_sha256": found.script_sha,
        "folder_path": str(Path(found.folder.path).resolve()),
        "hyperparameter_sources": found.hyperparameter_sources,
        "builtin_equivalent": {"base": found.builtin.base, "diff": found.builtin.diff, "tokenizer": found.builtin.tokenizer, "candidate": found.builtin.candidate} if found.builtin.base else None,
        "builtin_reason": found.builtin.reason,
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)

"""How long the competition bridge takes: importing record folders, and `p2pgolf submission`.

1. Import: generates --folders record folders (a script of its own, submission.json with three seeds and a
   hardware string, three train_seed<N>.log with a Hyperparameters block and final exact lines;
   every folder a different configuration) and runs `p2pgolf pool import-record` over all of them
   in one command. Baseline in the same run: `p2pgolf pool import` of the same number of
   already-signed records from a JSON-lines file (verify + store only), so the ratio shows
   what reading the folders adds.
2. Submission: a pool of --records signed results (own and a pinned friend's, many candidates,
   8xH100 and CPU classes, imported baselines among them) plus a three-seed candidate; times
   `p2pgolf submission CANDIDATE --out DIR` for a built-in candidate (the trainer bundled) and
   for a script candidate. Baseline in the same run: `p2pgolf pool ls --limit 1` on the same
   pool (process start and opening the pool).
All commands run as real subprocesses on real SQLite files under a temporary directory.

    .venv/bin/python benchmarks/bridge_bench.py [--folders 1000] [--records 10000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURE_SCRIPT = REPO / "tests" / "fixtures" / "records" / "track_10min_16mb" / "2026-03-20_ThreeSeeds" / "train_gpt.py"


def cli(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {k: v for k, v in os.environ.items() if k != "P2PGOLF_HOME"}
    env["PYTHONPATH"] = str(REPO)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "p2pgolf.node.cli", "--home", str(home), *args], cwd=REPO, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, proc


def make_folders(root: Path, n: int, rng: random.Random) -> list[Path]:
    track = root / "records" / "track_10min_16mb"
    script = FIXTURE_SCRIPT.read_text()
    out = []
    for i in range(n):
        d = track / f"2026-04-{1 + i % 28:02d}_Gen{i:05d}"
        d.mkdir(parents=True)
        (d / "train_gpt.py").write_text(script + f"# folder {i}\n")  # each record folder has its own script, as in the competition
        layers, lr = 6 + i % 10, round(0.01 + 0.001 * (i // 10), 4)
        seeds = {}
        for seed in (1, 2, 3):
            bpb = 1.15 + rng.random() * 0.1
            seeds[str(seed)] = {"val_bpb": round(bpb, 5), "val_loss": round(bpb * 1.6929, 5)}
            hp = "\n".join(f"  {k}: {v}" for k, v in (("seed", seed), ("num_layers", layers), ("matrix_lr", lr), ("train_batch_tokens", 524288)))
            (d / f"train_seed{seed}.log").write_text(
                f"Hyperparameters:\n{hp}\nworld_size:8\nseed:{seed}\nstep:12000/20000 train_time:600000ms step_avg:50.00ms\n"
                f"Total submission size int8+zlib: {15_000_000 + i} bytes\nfinal_int8_zlib_roundtrip_exact val_loss:{bpb * 1.6929:.8f} val_bpb:{bpb:.8f}\n"
            )
        (d / "submission.json").write_text(json.dumps({"author": f"gen {i}", "github_id": f"gen{i}", "date": "2026-04-01", "track": "10min_16mb",
                                                        "hardware": "8xH100 80GB SXM", "seeds": [1, 2, 3], "seed_results": seeds}))  # fmt: skip
        out.append(d)
    return out


def make_pool(home: Path, n: int, rng: random.Random) -> dict[str, str]:
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.protocol.candidates import script_base
    from p2pgolf.protocol.identity import Identity, load_identity
    from p2pgolf.protocol.records import HardwareClass, Metrics, Result
    from p2pgolf.protocol.signing import sign_record
    import hashlib

    me = load_identity(home / "identity.key")
    friend = Identity.generate()
    bench = benchmark("parameter-golf/sp1024-10min")
    h100 = HardwareClass("cuda", "NVIDIA H100 80GB HBM3", 8, 81559)
    cpu = HardwareClass("cpu", "Bench CPU", 16, 64000)
    now = int(time.time() * 1000)

    def rec(who, base, diff, seed, bpb, hw, i, note=""):
        return sign_record(Result(bench=bench.id, author=who.public_hex, created_ms=now - i, base=base, diff=diff, tokenizer="sp1024", hw=hw,
                                  budget_s=600.0, seed=seed, artifact=None, trainer="bench/0", note=note, parents=(),
                                  metrics=Metrics(bpb, bpb * 1.6929, 12000, 12000 * 524288, 15_500_000, 62_000_000)), who.signing_key)  # fmt: skip

    records = []
    for i in range(n - 6):
        who = me if i % 2 else friend
        diff = {"num_layers": 4 + i % 20, "matrix_lr": round(0.005 + 0.0001 * (i // 20 % 300), 5)}
        note = "imported-record track=10min_16mb folder=gen" if i % 50 == 0 else ""
        records.append(rec(who, "naive-baseline", diff, i % 5, 1.2 + rng.random() * 0.05, h100 if i % 3 else cpu, i, note))
    sha = hashlib.sha256(FIXTURE_SCRIPT.read_bytes()).hexdigest()
    builtin = {"num_layers": 30, "matrix_lr": 0.03}
    script = {"NUM_LAYERS": 11}
    for seed, bpb in ((1, 1.1501), (2, 1.1495), (3, 1.1504)):
        records.append(rec(me, "naive-baseline", builtin, seed, bpb, h100, 10**6 + seed))
        records.append(rec(me, script_base(sha), script, seed, bpb, h100, 2 * 10**6 + seed))
    with PoolStore(home / "pool.sqlite") as store:
        store.add_verified(records)
        TrustStore(store).pin(friend.public_hex, "friend")
    from p2pgolf.node.home import Home
    from p2pgolf.node.scripts import ScriptStore

    scripts = ScriptStore(Home(home))
    scripts.add_bytes(FIXTURE_SCRIPT.read_bytes(), name="bench/train_gpt.py", origin="added", source=str(FIXTURE_SCRIPT))
    scripts.approve(sha)
    return {"builtin": records[-2].record.candidate, "script": records[-1].record.candidate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folders", type=int, default=1000)
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # --- 1. import
        folders = make_folders(tmp, args.folders, rng)
        home = tmp / "importer"
        cli(home, "init")
        import_s, proc = cli(home, "pool", "import-record", "--json", *map(str, folders))
        report = json.loads(proc.stdout)
        assert report["refused"] == 0, report["folders"][:3]
        n_records = sum(len(f["records"]) for f in report["folders"])
        export = tmp / "records.jsonl"
        cli(home, "pool", "export", str(export))
        other = tmp / "plain"
        cli(other, "init")
        plain_s, proc = cli(other, "pool", "import", str(export))
        assert proc.returncode == 0, proc.stderr
        # --- 2. submission
        home2 = tmp / "submitter"
        cli(home2, "init")
        cands = make_pool(home2, args.records, rng)
        ls_s, _ = cli(home2, "pool", "ls", "--limit", "1")
        timings = {}
        for kind, cid in cands.items():
            seconds, proc = cli(home2, "submission", cid, "--out", str(tmp / f"out-{kind}"), "--against", "1.2")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            timings[kind] = seconds
    doc = {
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cpus, python {platform.python_version()}",
        "folders": args.folders, "records_imported": n_records, "import_record_s": import_s, "folders_per_s": args.folders / import_s,
        "baseline_pool_import_s": plain_s, "import_ratio": import_s / plain_s,
        "pool_records": args.records, "submission_builtin_s": timings["builtin"], "submission_script_s": timings["script"],
        "baseline_pool_ls_s": ls_s, "submission_ratio": timings["builtin"] / ls_s,
    }  # fmt: skip
    if args.json:
        print(json.dumps(doc))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"bridge bench on {doc['machine']}", title_justify="left")
    for c in ("what", "seconds", "baseline (same run)", "ratio"):
        table.add_column(c)
    table.add_row(f"pool import-record, {args.folders} folders ({n_records} records)", f"{import_s:.2f} ({doc['folders_per_s']:.0f} folders/s)", f"pool import of the same {n_records} signed records: {plain_s:.2f}", f"{doc['import_ratio']:.1f}x")
    table.add_row(f"submission (built-in, bundled) on {args.records} records", f"{timings['builtin']:.2f}", f"pool ls --limit 1: {ls_s:.2f}", f"{doc['submission_ratio']:.1f}x")
    table.add_row(f"submission (script) on {args.records} records", f"{timings['script']:.2f}", f"pool ls --limit 1: {ls_s:.2f}", f"{timings['script'] / ls_s:.1f}x")
    Console().print(table)


if __name__ == "__main__":
    main()

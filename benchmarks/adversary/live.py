"""The claims attacks end to end: real `p2pgolf join` processes on loopback (issue 20).

Per scenario, in one run: a victim V (`join` that trains: the smoke benchmark at a 3 s budget,
4,096 evaluation tokens, `experiments` experiments), an honest peer H (`join --no-train`, whose
key V pins) and an attacker relay A (`join --no-train`, a key V does not know). After V's first
experiment (its baseline, which gives its hardware class, base and score), this process signs the
attack's records with fresh keys and A publishes them over gossip:

- "sybil": 50 fresh keys each claim the same plausible fake (V's baseline minus 0.05 bpb, on V's
  hardware class, for a diff V has not run);
- "extreme": one fresh key claims val_bpb = 1e-6 for such a diff;
- "liar": one fresh key claims a plausible fake, reproduces it itself (a second result), and ten
  more fresh keys attest it in agreement;
- "none": A stays silent (the baseline, same settings, same run).

While V runs, H publishes one honest record a second (by H's key, for another hardware class).

Figures per scenario: `captured` (V's experiments after the attack that ran a fake's candidate,
built on a fake or re-measured one, over all its experiments after the attack) and `verify_on_fakes`
(claims V spent a check on that were fakes), V's decision latency (from an experiment's journal
end to the next one's start, max and median, polled every 0.1 s), H's gossip p99 to V (V's
received_ms minus H's), V's peak RSS (the join process; its training child apart) and the bytes
of its pool on disk. The simulator (benchmarks/adversary/claims.py) gives the statistic over
many seeds; this is the end-to-end check, one victim per scenario.

    .venv/bin/python benchmarks/adversary/live.py [--experiments 4] [--quick] [--json]
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge import RssWatch, _p99  # noqa: E402
from node_procs import NodeProc, make_home, stop_all, wait_until  # noqa: E402
from records_factory import H100, signed_attestation, signed_result  # noqa: E402

from p2pgolf.protocol.identity import Identity  # noqa: E402

BENCH = "smoke@3s"
SCENARIOS = ("none", "sybil", "extreme", "liar")
FAKE_DIFF = {"sybil": {"rope_base": 20000.0}, "extreme": {"logit_softcap": 17.0}, "liar": {"qk_gain_init": 2.0}, "none": {"rope_base": 20000.0}}
GAIN = 0.05
SYBIL_KEYS = 50
LIAR_HELPERS = 10
EXTREME_BPB = 1e-6
SHARE_KEYS = {"sybil": "live_sybil_share", "extreme": "live_extreme_claim_share", "liar": "live_self_attesting_liar_share", "none": "live_no_attack_share"}


class JournalWatch:
    """Polls a journal (JSON lines) every 0.1 s in a thread and notes when each line appeared."""

    def __init__(self, path: Path) -> None:
        self.path, self.entries, self._stop = path, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.path.exists():
                lines = self.path.read_text().splitlines()
                for line in lines[len(self.entries) :]:
                    try:
                        self.entries.append((time.monotonic(), json.loads(line)))
                    except json.JSONDecodeError:
                        break  # a line being written: read again next time
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def of(self, event: str) -> dict[int, tuple[float, dict]]:
        return {e["n"]: (t, e) for t, e in self.entries if e.get("event") == event}


def _rows(db: Path, sql: str, args: tuple = ()) -> list:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _attack_records(kind: str, victim, base: str, baseline_bpb: float) -> tuple[list, set[str], set[str]]:
    """(records to publish, ids of the fakes, candidate ids of the fakes)."""
    from p2pgolf.protocol.candidates import candidate_id

    diff = FAKE_DIFF[kind]
    hw = victim.record.hw
    tokenizer = victim.record.tokenizer
    fake = baseline_bpb - GAIN
    if kind == "none":
        return [], set(), {candidate_id(base, diff, tokenizer)}
    if kind == "sybil":
        records = [signed_result(Identity.generate(), bench=BENCH, base=base, diff=diff, val_bpb=fake, seed=i, hw=hw, tokenizer=tokenizer) for i in range(SYBIL_KEYS)]
    elif kind == "extreme":
        records = [signed_result(Identity.generate(), bench=BENCH, base=base, diff=diff, val_bpb=EXTREME_BPB, hw=hw, tokenizer=tokenizer)]
    else:
        liar = Identity.generate()
        claim = signed_result(liar, bench=BENCH, base=base, diff=diff, val_bpb=fake, seed=1, hw=hw, tokenizer=tokenizer)
        again = signed_result(liar, bench=BENCH, base=base, diff=diff, val_bpb=fake + 0.002, seed=2, hw=hw, tokenizer=tokenizer)
        records = [claim, again] + [signed_attestation(Identity.generate(), claim, val_bpb=fake + 0.001) for _ in range(LIAR_HELPERS)]
    return records, {r.id for r in records}, {candidate_id(base, diff, tokenizer)}


def run_scenario(root: Path, kind: str, experiments: int) -> dict:
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore

    home_v, id_v = make_home(root, f"victim-{kind}")
    home_h, id_h = make_home(root, f"honest-{kind}")
    home_a, id_a = make_home(root, f"attacker-{kind}")
    with TrustStore(home_v.pool_db) as trust:
        trust.pin(id_h.public_hex, "honest peer")
    h, a = NodeProc(home_h, id_h, bench=BENCH), NodeProc(home_a, id_a, bench=BENCH)
    v = NodeProc(home_v, id_v, bench=BENCH, train=True)
    journal = JournalWatch(home_v.root / "research" / "journal.jsonl")
    out: dict = {"scenario": kind}
    honest_ids: list[str] = []
    stop_honest = threading.Event()
    started = time.monotonic()
    try:
        h.start([], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        a.start([], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        v.start([h.addr, a.addr], "--sync-every", "3600", "--no-peer-exchange", "--experiments", str(experiments), "--eval-tokens", "4096").wait_ready(60)
        wait_until(lambda: len(v.status()["peers"]) >= 2, 30, what="V to connect to H and A")
        with RssWatch(v.proc.pid) as rss:

            def publish_honest() -> None:
                i = 0
                while not stop_honest.is_set():
                    raw = signed_result(id_h, bench=BENCH, seed=10_000 + i, hw=H100, val_bpb=1.9).raw
                    honest_ids.extend(r["id"] for r in h.publish([raw]) if "id" in r)
                    i += 1
                    stop_honest.wait(1.0)

            publisher = threading.Thread(target=publish_honest, daemon=True)
            publisher.start()
            wait_until(lambda: 0 in journal.of("end"), 600, interval=0.2, what="V's first experiment")
            first = journal.of("end")[0][1]
            with PoolStore(home_v.pool_db) as store:
                own = store.get(first["record"]) if first.get("record") else None
            if own is None:
                raise RuntimeError(f"V's first experiment made no record: {first}")
            base, baseline = own.record.base, own.record.metrics.val_bpb
            records, fake_ids, fake_candidates = _attack_records(kind, own, base, baseline)
            attack_at = time.monotonic()
            if records:
                a.publish([r.raw for r in records])
                wait_until(lambda: sum(1 for (i,) in _rows(home_v.pool_db, "SELECT id FROM records") if i in fake_ids) >= len(fake_ids), 30, what="V to hold the attack's records")
            out["attack_held_after_s"] = time.monotonic() - attack_at
            wait_until(lambda: len(journal.of("end")) >= experiments or v.proc.poll() is not None, 300 * experiments, interval=0.5, what="V's experiments")
            stop_honest.set()
            publisher.join(10)
            time.sleep(2.0)
        out["rss_peak_mb"] = rss.peak
    finally:
        stop_honest.set()
        journal.stop()
        stop_all([v, a, h])
    starts, ends = journal.of("start"), journal.of("end")
    after = [starts[n][1] for n in sorted(starts) if n >= 1]
    captured = [s for s in after if s["candidate"] in fake_candidates or set(s.get("parents") or ()) & fake_ids or s.get("subject") in fake_ids]
    verify_path = home_v.root / "research" / "verify.jsonl"
    checks = [json.loads(line) for line in verify_path.read_text().splitlines()] if verify_path.exists() else []
    latency = [starts[n][0] - ends[n - 1][0] for n in sorted(starts) if n >= 1 and n - 1 in ends]
    at_h = dict(_rows(home_h.pool_db, "SELECT id, received_ms FROM records"))
    at_v = dict(_rows(home_v.pool_db, "SELECT id, received_ms FROM records"))
    gossip = [(at_v[i] - at_h[i]) / 1000 for i in honest_ids if i in at_v and i in at_h]
    disk = sum(p.stat().st_size for p in home_v.root.glob("pool.sqlite*"))
    out.update({
        "experiments_after_attack": len(after), "captured": len(captured), "captured_share": len(captured) / len(after) if after else None,
        "captured_what": [{"n": s["n"], "operator": s["operator"], "candidate": s["candidate"][:12]} for s in captured],
        "verify_on_fakes": sum(1 for c in checks if c.get("subject") in fake_ids), "verify_checks": len(checks),
        "decision_s_max": max(latency) if latency else None, "decision_s_median": sorted(latency)[len(latency) // 2] if latency else None,
        "honest_gossip_p99_s": _p99(gossip), "honest_delivered": f"{len(gossip)}/{len(honest_ids)}",
        "pool_disk_bytes": disk, "victim_baseline_bpb": baseline, "fake_records": len(fake_ids), "seconds": time.monotonic() - started,
        "operators": [s["operator"] for s in after],
    })  # fmt: skip
    return out


def measure(quick: bool = False, experiments: int | None = None) -> dict:
    """Every scenario's figures (module docstring), the no-attack one first; `quick`: 3 experiments."""
    experiments = experiments or (3 if quick else 5)
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m_start": os.getloadavg()[0]},
        "settings": {"bench": BENCH, "experiments": experiments, "sybil_keys": SYBIL_KEYS, "liar_helpers": LIAR_HELPERS, "fake_gain": GAIN, "extreme_bpb": EXTREME_BPB, "eval_tokens": 4096},
        "scenarios": {},
    }
    with tempfile.TemporaryDirectory(prefix="live-claims-") as tmp:
        for kind in SCENARIOS:
            result["scenarios"][kind] = run_scenario(Path(tmp), kind, experiments)
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    none = result["scenarios"]["none"]
    for kind, figures in result["scenarios"].items():
        result[SHARE_KEYS[kind]] = figures["captured_share"]
        if kind != "none":
            for name in ("decision_s_max", "honest_gossip_p99_s", "rss_peak_mb", "pool_disk_bytes"):
                result[f"live_{kind}_{name}"], result[f"live_{kind}_{name}_baseline"] = figures[name], none[name]
    return result


def _table(r: dict) -> None:
    m, s = r["machine"], r["settings"]
    print(f"adversary/live: {m['platform']}, {m['cpus']} CPUs, load {m['load_avg_1m_start']:.1f} -> {m['load_avg_1m_end']:.1f}; "
          f"victim join on {s['bench']}, {s['experiments']} experiments per scenario, real processes on loopback")  # fmt: skip
    cols = ("scenario", "captured", "checks on fakes", "decision max/median (s)", "honest gossip p99 (s)", "delivered", "peak RSS (MB)", "pool disk (KB)", "seconds")
    print(" | ".join(cols))
    for kind, f in r["scenarios"].items():

        def n(x, fmt):
            return "n/a" if x is None else fmt.format(x)

        print(" | ".join([
            kind, f"{f['captured']}/{f['experiments_after_attack']}", f"{f['verify_on_fakes']}/{f['verify_checks']}",
            f"{n(f['decision_s_max'], '{:.1f}')}/{n(f['decision_s_median'], '{:.1f}')}", n(f["honest_gossip_p99_s"], "{:.3f}"), f["honest_delivered"],
            f"{f['rss_peak_mb']:.0f}", f"{f['pool_disk_bytes'] / 1024:.0f}", f"{f['seconds']:.0f}",
        ]))  # fmt: skip


@click.command()
@click.option("--experiments", default=5, show_default=True, help="V's experiments per scenario (the first is before the attack)")
@click.option("--quick", is_flag=True, help="3 experiments per scenario")
@click.option("--json", "as_json", is_flag=True)
def main(experiments: int, quick: bool, as_json: bool) -> None:
    r = measure(quick, None if quick else experiments)
    print(json.dumps(r)) if as_json else _table(r)


if __name__ == "__main__":
    main()

"""The competition bridge's export side: `p2pgolf submission` checks the rules and writes a folder."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.submission_rules import SeedRun, check_submission, significance, student_t_cdf
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity, load_identity
from p2pgolf.protocol.records import HardwareClass, Metrics, Result
from p2pgolf.protocol.script_hparams import read_hyperparameters
from p2pgolf.protocol.signing import sign_record

REPO = Path(__file__).resolve().parents[1]
TRACK = REPO / "tests" / "fixtures" / "records" / "track_10min_16mb"
H100X8 = HardwareClass("cuda", "NVIDIA H100 80GB HBM3", 8, 81559)
BENCH = "parameter-golf/sp1024-10min"
LOSS_PER_BPB = 1.6929


def run(*args: str, home: Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "P2PGOLF_HOME"}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "p2pgolf.node.cli", "--home", str(home), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def result(who: Identity, *, base: str, diff: dict, seed: int, val_bpb: float, bench: str = BENCH, hw: HardwareClass = H100X8, artifact: int = 15_800_000) -> Result:
    b = benchmark(bench)
    return Result(
        bench=b.id, author=who.public_hex, created_ms=int(time.time() * 1000) - 1000 * seed, base=base, diff=diff, tokenizer="sp1024",
        hw=hw, budget_s=b.budget_s, seed=seed, artifact=None, trainer="test/0", note="", parents=(),
        metrics=Metrics(val_bpb=val_bpb, val_loss=val_bpb * LOSS_PER_BPB, steps=12000, train_tokens=12000 * 524288, artifact_bytes=artifact, eval_tokens=62_000_000),
    )  # fmt: skip


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node that imported two records (the baseline 1.2244 and a three-seed script record) and
    measured the script candidate itself, and a few other candidates, on 8xH100."""
    home = tmp_path_factory.mktemp("submitter")
    assert run("init", home=home).returncode == 0
    proc = run("pool", "import-record", "--json", str(TRACK / "2026-03-17_TinyBaseline"), str(TRACK / "2026-03-20_ThreeSeeds"), home=home)
    assert proc.returncode == 0, proc.stderr
    folders = {Path(f["folder"]).name: f for f in json.loads(proc.stdout)["folders"]}
    script = folders["2026-03-20_ThreeSeeds"]
    me = load_identity(home / "identity.key")
    base = "script:" + script["script_sha256"]
    diff = {"MATRIX_LR": 0.02, "NUM_LAYERS": 11}
    recs = [result(me, base=base, diff=diff, seed=s, val_bpb=v) for s, v in ((1, 1.2001), (2, 1.1995), (3, 1.2004))]
    recs += [result(me, base="naive-baseline", diff={"num_layers": 10}, seed=s, val_bpb=v) for s, v in ((1, 1.2000), (2, 1.1990), (3, 1.2010))]
    recs += [result(me, base="naive-baseline", diff={"num_layers": 12}, seed=s, val_bpb=1.19) for s in (1, 2)]  # two seeds only
    recs += [result(me, base="naive-baseline", diff={"num_layers": 13}, seed=s, val_bpb=1.19, artifact=16_100_000) for s in (1, 2, 3)]
    recs += [result(me, base="naive-baseline", diff={"num_layers": 14}, seed=s, val_bpb=1.19, bench=BENCH + "@900s") for s in (1, 2, 3)]
    with PoolStore(home / "pool.sqlite") as store:
        store.add_verified([sign_record(r, me.signing_key) for r in recs])
    cands = {k: recs[i].candidate for k, i in (("script", 0), ("builtin", 3), ("two_seeds", 6), ("oversize", 8), ("slow", 11))}
    return home, cands, script


@pytest.fixture(scope="module")
def approved(node):
    """The same node after its user approved the imported script (its exact hash)."""
    home, cands, script = node
    proc = run("script", "approve", script["script_sha256"], home=home)
    assert proc.returncode == 0, proc.stderr
    return node


# --- the rules -------------------------------------------------------------------------------


def test_student_t_matches_known_quantiles():
    assert student_t_cdf(2.919986, 2) == pytest.approx(0.95, abs=1e-5)
    assert student_t_cdf(6.964557, 2) == pytest.approx(0.99, abs=1e-5)
    assert student_t_cdf(-2.570582, 5) == pytest.approx(0.025, abs=1e-5)
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)


def test_significance_needs_the_gain_and_the_p_value():
    runs = [SeedRun(s, v, v * LOSS_PER_BPB, 1, 600.0, "hw", True) for s, v in ((1, 1.2001), (2, 1.1995), (3, 1.2004))]
    far = significance(runs, 1.2244)
    assert far.gain_nats == pytest.approx((1.2244 - 1.20) * LOSS_PER_BPB, abs=1e-3) and far.p < 1e-3
    near = significance(runs, 1.2025)  # 0.0025 bpb = 0.0042 nats better: under the 0.005-nat threshold
    assert near.p > 0.5
    rules, _ = check_submission(runs[:2], hw="hw", hw_label="8xH100", budget_s=600.0, baseline_bpb=1.2244)
    assert [r.name for r in rules if not r.ok] == ["seeds"] and "2 of 3 seeds on 8xH100" in rules[2].detail


# --- the command -----------------------------------------------------------------------------


def test_an_unapproved_script_is_not_exported(tmp_path):
    home = tmp_path / "home"
    assert run("init", home=home).returncode == 0
    folder = json.loads(run("pool", "import-record", "--json", str(TRACK / "2026-03-20_ThreeSeeds"), home=home).stdout)["folders"][0]
    proc = run("submission", folder["candidate"], "--out", str(tmp_path / "x"), "--draft", home=home)
    assert "FAIL script:" in proc.stdout and f"{folder['script_sha256'][:12]} is not approved here" in proc.stdout
    assert not (tmp_path / "x" / "train_gpt.py").exists()  # even a draft never carries an unapproved script


def test_a_script_candidate_is_written_with_its_diff_as_defaults(approved, tmp_path):
    home, cands, script = approved
    out = tmp_path / "sub"
    proc = run("submission", cands["script"], "--out", str(out), "--author", "Me", "--github-id", "me-gh", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "baseline" in proc.stdout or "imported record 2026-03-17_TinyBaseline" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "submission.json", "train_gpt.py", "train_seed1.log", "train_seed2.log", "train_seed3.log"]
    doc = json.loads((out / "submission.json").read_text())
    assert doc["seeds"] == [1, 2, 3] and doc["track"] == "10min_16mb" and doc["hardware"] == "8xH100" and doc["github_id"] == "me-gh"
    written, original = len((out / "train_gpt.py").read_bytes()), len((TRACK / "2026-03-20_ThreeSeeds" / "train_gpt.py").read_bytes())
    assert doc["val_bpb"] == pytest.approx((1.2001 + 1.1995 + 1.2004) / 3)
    assert doc["bytes_total"] == 15_800_000 - original + written  # the code written replaces the code the runs counted
    assert doc["bytes_code"] == written and written == original + 1 and "draft" not in doc  # NUM_LAYERS 9 -> 11
    assert set(doc["seed_results"]) == {"1", "2", "3"} and doc["seed_results"]["2"]["val_bpb"] == 1.1995
    source = (out / "train_gpt.py").read_text()
    defaults = read_hyperparameters(source).defaults()
    assert defaults["NUM_LAYERS"] == 11 and defaults["MATRIX_LR"] == 0.02 and defaults["MODEL_DIM"] == 512
    env = {k: v for k, v in os.environ.items() if k not in ("NUM_LAYERS", "MATRIX_LR")}
    printed = subprocess.run([sys.executable, "train_gpt.py"], cwd=out, env=env, capture_output=True, text=True, timeout=60).stdout
    assert "  num_layers: 11" in printed and "  matrix_lr: 0.02" in printed  # it runs the diff with no environment
    readme = (out / "README.md").read_text()
    assert "torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme and "| 2 | 1.19950 |" in readme
    assert "t=" in readme and "p=" in readme and "`NUM_LAYERS` by me" in readme
    assert "val_bpb:1.19950000" in (out / "train_seed2.log").read_text()


def test_a_built_in_candidate_is_written_with_the_trainer_bundled(node, tmp_path):
    home, cands, _ = node
    out = tmp_path / "builtin"
    proc = run("submission", cands["builtin"], "--out", str(out), "--against", "1.2244", home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "requirements.txt").read_text().split() == ["numpy", "torch", "sentencepiece"]
    source = (out / "train_gpt.py").read_text()
    tree = ast.parse(source)
    names = {t.id for node_ in tree.body if isinstance(node_, ast.Assign) for t in node_.targets if isinstance(t, ast.Name)}
    assert {"CANDIDATE", "MODULES"} <= names
    baked = next(n.value.args[0].value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "CANDIDATE")
    assert json.loads(baked) == {"bench_name": BENCH, "base": "naive-baseline", "diff": {"num_layers": 10}, "seed": 1, "budget_s": 600.0} or json.loads(baked)["diff"] == {"num_layers": 10}
    doc = json.loads((out / "submission.json").read_text())
    from p2pgolf.trainer.artifact import code_bytes

    assert doc["bytes_total"] == 15_800_000 - code_bytes("torch") + len(source.encode())


@pytest.mark.parametrize(
    "which, args, failing, says",
    [
        ("two_seeds", (), "seeds", "2 of 3 seeds on 8xH100"),
        ("oversize", (), "size", "over the cap"),
        ("slow", ("--bench", BENCH + "@900s"), "budget", "budget above 600"),
        ("builtin", ("--against", "1.2020"), "significance", "needed 0.005"),
    ],
)
def test_a_failing_rule_is_named_and_nothing_is_written(node, tmp_path, which, args, failing, says):
    home, cands, _ = node
    out = tmp_path / "refused"
    proc = run("submission", cands[which], "--out", str(out), *args, home=home)
    assert proc.returncode == 1 and f"not written: {failing}" in proc.stderr
    assert f"FAIL {failing}:" in proc.stdout and says in proc.stdout
    assert not out.exists()


def test_draft_writes_a_failing_candidate_marked_as_a_draft(node, tmp_path):
    home, cands, _ = node
    out = tmp_path / "draft"
    proc = run("submission", cands["two_seeds"], "--out", str(out), "--draft", home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "submission.json").read_text())["draft"] is True
    assert (out / "README.md").read_text().startswith("# DRAFT: ")


def test_imported_seeds_never_count_as_our_evidence(tmp_path):
    home = tmp_path / "home"
    assert run("init", home=home).returncode == 0
    proc = run("pool", "import-record", "--json", str(TRACK / "2026-03-25_StubLoader"), home=home)
    candidate = json.loads(proc.stdout)["folders"][0]["candidate"]
    # three seeds on 8xH100, all of them claims the importer transcribed from someone else's run
    proc = run("submission", candidate, "--out", str(tmp_path / "x"), "--against", "1.30", home=home)
    assert proc.returncode == 1 and "0 of 3 seeds on 8xH100" in proc.stdout and "imported claims, which do not count" in proc.stdout


def test_defaults_are_written_into_a_decoded_wrapper_and_checked():
    from p2pgolf.trainer.script_defaults import ScriptRewriteError, write_defaults

    wrapped = (TRACK / "2026-03-28_WrappedScript" / "train_gpt.py").read_bytes()
    out = write_defaults(wrapped, {"NUM_LAYERS": 12, "TIE_EMBEDDINGS": False, "EMA_DECAY": 0.99})
    assert "b85decode" not in out  # written out plain: the inner source, readable
    defaults = read_hyperparameters(out).defaults()
    assert (defaults["NUM_LAYERS"], defaults["TIE_EMBEDDINGS"], defaults["EMA_DECAY"]) == (12, False, 0.99)
    with pytest.raises(ScriptRewriteError, match="NO_SUCH_NAME"):
        write_defaults(wrapped, {"NO_SUCH_NAME": 1})

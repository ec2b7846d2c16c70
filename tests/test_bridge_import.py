"""The competition bridge's import side: record folders of every layout -> signed results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2pgolf.pool.bridge import hardware_text
from p2pgolf.pool.bridge.errors import FolderError
from p2pgolf.pool.bridge.importer import import_folder
from p2pgolf.pool.bridge.provenance import MARKER, make_note, parse_note
from p2pgolf.pool.bridge.run_command import readme_env
from p2pgolf.pool.bridge.submission_json import parse_submission
from p2pgolf.pool.bridge.train_log import parse_log
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence import from_store
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.identity import load_identity

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "tests" / "fixtures" / "records"
TRACK = RECORDS / "track_10min_16mb"
H100X8 = "cuda:NVIDIA H100 80GB HBM3:x8"
IMPORTER = "ab" * 32
GOOD = {
    "2026-03-17_TinyBaseline": [1337],
    "2026-03-20_ThreeSeeds": [1, 2, 3],
    "2026-03-22_Spaced Name Record": [7, 8],
    "2026-03-25_StubLoader": [11, 12, 13],
    "2026-03-28_WrappedScript": [21, 22],
    "2026-03-29_LongRun": [1337],
}
BAD = {
    "2026-03-30_ScoreUnderWrongKey": ("submission.json", "val_bpb"),
    "2026-03-31_OverTheCap": ("submission.json", "artifact bytes"),
    "2026-04-01_EmptyScript": ("train_gpt.py", ""),
}


def run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "P2PGOLF_HOME"}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "p2pgolf.node.cli", "--home", str(home), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def folders() -> list[Path]:
    return sorted(p for p in RECORDS.glob("track_*/*") if p.is_dir())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A node that imported every fixture folder in one command (--json report)."""
    home = tmp_path_factory.mktemp("importer")
    assert run("init", home=home).returncode == 0
    proc = run("pool", "import-record", "--json", *map(str, folders()), home=home)
    return home, proc, json.loads(proc.stdout)


# --- the parsers, one idea each -------------------------------------------------------------


def test_submission_layouts_give_one_shape():
    seeds = parse_submission(json.dumps({"mean_val_bpb": 1.2, "seeds": [3, 1], "date": "2026-03-20"}))
    assert seeds.val_bpb == 1.2 and [s.seed for s in seeds.seeds] == [1, 3] and seeds.seeds[0].val_bpb is None
    results = parse_submission(json.dumps({"seed_results": {"42": {"val_bpb": 1.1, "val_loss": 1.9, "artifact_bytes": 15_000_000, "steps": 10}}, "date": "2026-04-01T10:00:00Z"}))
    assert results.seeds[0].seed == 42 and results.seeds[0].artifact_bytes == 15_000_000 and results.date_ms == 1775037600000
    listed = parse_submission(json.dumps({"seeds": [{"seed": 5, "val_bpb": 1.3, "val_loss": 2.2}], "bytes_total": 9, "bytes_code": 3}))
    assert listed.seeds[0].val_loss == 2.2 and (listed.bytes_total, listed.bytes_code) == (9, 3)
    assert parse_submission(json.dumps({"artifact_bytes": 7})).bytes_total == 7


@pytest.mark.parametrize(
    "doc, field",
    [({"val_bpb": "1.2"}, "val_bpb"), ({"date": "March"}, "date"), ({"seed_results": [1]}, "seed_results"), ({"seeds": ["x"]}, "seeds[0]"), ({"bytes_total": -1}, "bytes_total")],
)
def test_a_bad_submission_field_is_named(doc, field):
    with pytest.raises(FolderError) as err:
        parse_submission(json.dumps(doc))
    assert err.value.field == field and err.value.file == "submission.json"


def test_the_last_exact_line_is_the_score_and_the_log_prints_the_rest():
    text = (TRACK / "2026-03-20_ThreeSeeds" / "train_seed2.log").read_text()
    text += "final_int6_sliding_window_exact val_loss:2.00000000 val_bpb:1.18000000\n"
    info = parse_log(text, "train_seed2.log")
    assert (info.score_line, info.val_bpb, info.val_loss) == ("final_int6_sliding_window_exact", 1.18, 2.0)
    assert info.seed == 2 and info.steps == 12000 and info.artifact_bytes == 15899998 and info.world_size == 8
    assert info.hyperparameters["num_layers"] == "11"
    smi = parse_log((TRACK / "2026-03-17_TinyBaseline" / "train.log").read_text())
    assert smi.gpus == ("NVIDIA H100 80GB HBM3",) * 8 and smi.gpu_memory_mib == 81559 and smi.hyperparameters == {}


def test_readme_env_is_the_first_run_commands_assignments():
    text = "intro\n```bash\nRUN_ID=x \\\n  NUM_LAYERS=10 MATRIX_LR='0.02' \\\n  torchrun --standalone --nproc_per_node=8 train_gpt.py\nSEED=2 torchrun train_gpt.py\n```\n"
    assert readme_env(text) == {"RUN_ID": "x", "NUM_LAYERS": "10", "MATRIX_LR": "0.02"}
    assert readme_env("```\npip install x\n```") == {}


def test_hardware_strings_map_to_the_class_our_runs_record():
    assert hardware_text.from_text("8xH100 80GB SXM").key == H100X8
    assert hardware_text.from_text("8x NVIDIA H100 80GB HBM3").key == H100X8
    assert hardware_text.from_text("2x NVIDIA H100 80GB HBM3 (TensorPool), developed on 1x NVIDIA GB10").key == "cuda:NVIDIA H100 80GB HBM3:x2"
    assert hardware_text.from_text("H100") is None and hardware_text.from_text("8x mystery chip") is None


def test_provenance_note_round_trips_and_fits():
    fields = {"track": "10min_16mb", "folder": "2026-03-22_Spaced Name Record", "github": "cy", "pr": 42, "log": "logs/train0.txt", "seed": 7}
    note = make_note(fields)
    assert note.startswith(MARKER + " ") and parse_note(note) == {k: str(v) for k, v in fields.items()}
    long = make_note({**fields, "folder": "x" * 400})
    assert len(long) <= 280 and parse_note(long)["github"] == "cy"
    assert parse_note("a run of mine") is None


# --- folders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GOOD))
def test_each_layout_gives_one_result_per_seed(name):
    path = next(p for p in folders() if p.name == name)
    found = import_folder(path, IMPORTER)
    assert [r.seed for r in found.records] == GOOD[name]
    for r in found.records:
        prov = parse_note(r.note)
        assert prov["folder"] == name and prov["seed"] == str(r.seed) and r.author == IMPORTER
        assert r.base == "script:" + found.script_sha and 1.0 < r.metrics.val_bpb < 1.3 and r.metrics.val_loss > 1.5


def test_the_log_is_the_ground_truth_for_hyperparameters_and_score():
    # README sets NUM_LAYERS=10 MATRIX_LR=0.02, the logs print 11 and 0.02, the script's defaults are 9 and 0.04
    three = import_folder(TRACK / "2026-03-20_ThreeSeeds", IMPORTER)
    assert dict(three.records[0].diff) == {"MATRIX_LR": 0.02, "NUM_LAYERS": 11}
    assert three.hyperparameter_sources["NUM_LAYERS"] == "train_seed1.log" and three.hyperparameter_sources["ITERATIONS"] == "default"
    assert [r.metrics.val_bpb for r in three.records] == [1.21, 1.2093, 1.211]
    assert three.records[0].metrics.train_tokens == 12000 * 524288 and three.records[0].hw.key == H100X8
    # README only (no block in the log): NUM_LAYERS=10 from the run command
    tiny = import_folder(TRACK / "2026-03-17_TinyBaseline", IMPORTER)
    assert dict(tiny.records[0].diff) == {"NUM_LAYERS": 10} and tiny.hyperparameter_sources["NUM_LAYERS"] == "README.md"
    assert tiny.records[0].metrics.val_bpb == 1.2243657 and tiny.hardware_from == "log"


def test_stub_and_wrapper_scripts_resolve_to_the_code_that_ran():
    stub = import_folder(TRACK / "2026-03-25_StubLoader", IMPORTER)
    assert stub.folder.entry.name == "train_gpt.py" and stub.folder.script.name == "model_impl.py"
    assert "TRIGRAM_BUCKETS" in stub.builtin.reason  # a hyperparameter no built-in knob has
    wrapped = import_folder(TRACK / "2026-03-28_WrappedScript", IMPORTER)
    assert wrapped.records[0].metrics.artifact_bytes == 15_990_000 and wrapped.records[0].metrics.steps == 0


def test_an_early_record_has_an_equivalent_built_in_candidate():
    found = import_folder(TRACK / "2026-03-20_ThreeSeeds", IMPORTER)
    assert found.builtin.base == "naive-baseline"
    # WARMDOWN_ITERS=1200 is naive-baseline's own warmdown_steps, so it leaves the diff
    assert found.builtin.diff == {"matrix_lr": 0.02, "num_layers": 11}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_malformed_folder_is_refused_naming_file_and_field(name):
    with pytest.raises(FolderError) as err:
        import_folder(TRACK / name, IMPORTER)
    assert (err.value.file, err.value.field) == BAD[name]


def test_a_folder_outside_a_track_directory_is_refused(tmp_path):
    shutil.copytree(TRACK / "2026-03-17_TinyBaseline", tmp_path / "2026-03-17_TinyBaseline")
    with pytest.raises(FolderError) as err:
        import_folder(tmp_path / "2026-03-17_TinyBaseline", IMPORTER)
    assert err.value.field == "track"


# --- the command -----------------------------------------------------------------------------


def test_import_record_stores_every_good_folder_and_reports_the_refused(imported):
    home, proc, report = imported
    assert proc.returncode == 1 and "3 of 9 folder(s) refused" in proc.stderr
    by_name = {Path(f["folder"]).name: f for f in report["folders"]}
    assert {n for n, f in by_name.items() if f["status"] == "imported"} == set(GOOD)
    for name, (file, field) in BAD.items():
        assert by_name[name]["status"] == "refused" and by_name[name]["reason"].startswith(f"{file}: {field}")
    with PoolStore(home / "pool.sqlite") as store:
        assert store.count() == sum(len(s) for s in GOOD.values())
        me = load_identity(home / "identity.key").public_hex
        assert {a for a, _ in store.authors()} == {me}
    assert by_name["2026-03-20_ThreeSeeds"]["builtin_equivalent"]["base"] == "naive-baseline"
    # each imported script is held by its hash, and none is approved (importing never makes a script runnable)
    listed = json.loads(run("script", "ls", "--json", home=home).stdout)
    held = {e["sha"] for e in listed}
    assert {f["script_sha256"] for f in report["folders"] if f["status"] == "imported"} <= held
    assert not any(e.get("approved_ms") for e in listed)


def test_importing_again_adds_nothing(imported):
    home, _, _ = imported
    proc = run("pool", "import-record", "--json", str(TRACK / "2026-03-20_ThreeSeeds"), home=home)
    assert proc.returncode == 0, proc.stderr
    folder = json.loads(proc.stdout)["folders"][0]
    assert folder["added"] == 0 and folder["already_present"] == 3


def test_imported_claims_weigh_as_an_unknown_keys_until_reproduced(imported):
    home, _, report = imported
    with PoolStore(home / "pool.sqlite") as store:
        trust = TrustStore(store)
        bench = store.query(kind="result")[0].bench
        post = estimate(from_store(store, bench), trust.status, H100X8)
    cid = next(f["candidate"] for f in report["folders"] if Path(f["folder"]).name == "2026-03-20_ThreeSeeds")
    rows = post.rows[cid]
    assert len(rows) == 3 and all(r.status == "unknown" and r.trust == pytest.approx(0.1) for r in rows)
    assert post.info[cid].established < post.established_weight  # never the incumbent on imports alone


def test_explain_says_where_an_imported_claim_came_from(imported):
    home, _, report = imported
    cid = next(f["candidate"] for f in report["folders"] if Path(f["folder"]).name == "2026-03-20_ThreeSeeds")
    proc = run("pool", "explain", cid, "--hw", H100X8, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {r["imported"]["folder"] for r in doc["evidence"]} == {"2026-03-20_ThreeSeeds"}
    assert {r["imported"]["github"] for r in doc["evidence"]} == {"bo-example"} and doc["evidence"][0]["imported"]["pr"] == "42"
    assert doc["builtin_equivalent"]["diff"] == {"matrix_lr": 0.02, "num_layers": 11}
    text = run("pool", "explain", cid, "--hw", H100X8, home=home).stdout
    assert "imported claim (unverified until reproduced)" in text and "equivalent built-in candidate" in text


def test_a_reproduction_by_a_trusted_key_makes_an_imported_claim_count(tmp_path):
    import time

    from p2pgolf.protocol.records import Attestation, HardwareClass, Metrics
    from p2pgolf.protocol.signing import sign_record

    home = tmp_path / "home"
    assert run("init", home=home).returncode == 0
    report = json.loads(run("pool", "import-record", "--json", str(TRACK / "2026-03-20_ThreeSeeds"), home=home).stdout)["folders"][0]
    me = load_identity(home / "identity.key")
    with PoolStore(home / "pool.sqlite") as store:
        subject = store.get(report["records"][0])
        reproduced = Attestation(
            bench=subject.bench, author=me.public_hex, created_ms=int(time.time() * 1000), subject=subject.id, method="reproduce",
            tokenizer=subject.record.tokenizer, hw=HardwareClass("cuda", "NVIDIA H100 80GB HBM3", 8, 81559), seed=subject.record.seed,
            metrics=Metrics(1.2102, 1.2102 * 1.6929, 12000, 0, 15_899_000, 62_000_000), artifact=None, trainer="test/0", note="",
        )  # fmt: skip
        store.add_verified([sign_record(reproduced, me.signing_key)])
        post = estimate(from_store(store, subject.bench), TrustStore(store).status, H100X8)
    rows = {r.record_id: r for r in post.rows[report["candidate"]]}
    assert rows[subject.id].claim == pytest.approx(1.0)  # reproduced by my own key: believed
    others = [r for rid, r in rows.items() if rid in report["records"] and rid != subject.id]
    assert len(others) == 2 and all(r.claim < 0.5 for r in others)  # the other seeds are still claims


def test_the_records_loop_warmdown_and_decay_names_map_to_knobs_of_the_same_meaning():
    from p2pgolf.pool.bridge.builtin_equivalent import builtin_equivalent

    found = builtin_equivalent({"NUM_LAYERS": 10, "NUM_LOOPS": 1, "LOOP_START": 4, "LOOP_END": 5, "ENABLE_LOOPING_AT": 0.35,
                                "MUON_WD": 0.04, "ADAM_WD": 0.02, "EMBED_WD": 0.085, "WARMDOWN_ITERS": 3500})  # fmt: skip
    assert found.reason == ""
    assert found.diff == {"adam_weight_decay": 0.02, "embed_weight_decay": 0.085, "loop_end": 5, "loop_from_frac": 0.35, "loop_start": 4,
                          "muon_weight_decay": 0.04, "num_layers": 10, "num_loops": 1, "warmdown_steps": 3500}  # fmt: skip

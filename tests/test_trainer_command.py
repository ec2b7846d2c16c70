"""`p2pgolf train` end to end on the smoke benchmark, and the runner's failure modes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_helpers import P2PGOLF_CLI, p2pgolf  # also: one torch thread, for the children too
from p2pgolf.protocol.records import HardwareClass, Metrics
from p2pgolf.trainer.runner import RESULT_KEYS

SUMMARY = ("status:", "val_bpb:", "val_loss:", "steps:", "training_seconds:", "tokens_per_s:", "artifact_bytes:", "eval_tokens:")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    out = home / "run"
    proc = p2pgolf("train", "--bench", "smoke", "--base", "smoke-tiny", "--budget", "4", "--out", str(out), "--seed", "5", home=home)
    return proc, out


def test_train_command_on_smoke_writes_the_run_directory_and_prints_the_summary(smoke_run):
    proc, out = smoke_run
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for field in SUMMARY:
        assert any(line.startswith(field) for line in lines), field
    assert "status: ok" in lines
    for name in ("config.json", "log.txt", "metrics.json", "model.p2pgolf", "result.json"):
        assert (out / name).is_file(), name
    # Progress while training (not a terminal here, so plain lines instead of the live line).
    assert "step 1  loss" in proc.stderr and "tok/s" in proc.stderr and "s left of 4s" in proc.stderr


def test_the_run_trains_for_its_budget_and_stops_within_a_step_of_it(smoke_run):
    _, out = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    step_s = metrics["step_avg_ms"] / 1000.0
    assert 4.0 - 3 * step_s <= metrics["training_seconds"] <= 4.0 + step_s


def test_result_json_has_exactly_the_agreed_fields_and_valid_values(smoke_run):
    _, out = smoke_run
    result = json.loads((out / "result.json").read_text())
    assert tuple(result) == RESULT_KEYS
    assert result["status"] == "ok" and result["error"] is None
    assert result["bench_name"] == "smoke@4s" and result["seed"] == 5 and result["budget_s"] == 4.0
    assert result["parents"] == [] and result["note"] == "" and result["trainer"].startswith("p2pgolf-torch/")
    metrics = Metrics.from_wire(result["metrics"])  # the protocol's own validation
    HardwareClass.from_wire(result["hw"])
    assert result["artifact_sha256"] == hashlib.sha256((out / "model.p2pgolf").read_bytes()).hexdigest()
    assert metrics.steps > 0 and metrics.train_tokens == metrics.steps * 4096 and not metrics.eval_partial
    assert metrics.artifact_bytes > (out / "model.p2pgolf").stat().st_size  # code bytes are counted


def test_loss_falls_during_the_smoke_run(smoke_run):
    _, out = smoke_run
    losses = [float(part.split(":")[1]) for line in (out / "log.txt").read_text().splitlines() for part in line.split() if part.startswith("train_loss:")]
    assert len(losses) >= 2 and losses[-1] < losses[0] - 1.0, losses


def test_reported_val_bpb_is_that_of_the_model_reloaded_from_the_artifact_file(smoke_run):
    import torch

    from p2pgolf.trainer.config import RunConfig
    from p2pgolf.trainer.datasets import load_benchmark_data
    from p2pgolf.trainer.run_torch import evaluate_artifact

    _, out = smoke_run
    run = RunConfig.from_json(json.loads((out / "config.json").read_text()))
    data = load_benchmark_data(run.bench, None)
    again = evaluate_artifact((out / "model.p2pgolf").read_bytes(), run, data, torch.device("cpu"))
    metrics = json.loads((out / "result.json").read_text())["metrics"]
    assert again.val_bpb == pytest.approx(metrics["val_bpb"], rel=1e-6)
    assert json.loads((out / "metrics.json").read_text())["prequant_val_bpb"] != metrics["val_bpb"]


@pytest.mark.parametrize(
    "setting,message",
    [
        ("model_dim=5", "knob model_dim: 5 is outside the allowed range [16, 4096]"),
        ("activation=gelu", "knob activation: 'gelu' is not one of relu2, leaky_relu2, swiglu"),
        ("modeldim=64", "unknown knob 'modeldim'"),
        ("num_heads=3", "model_dim=64 must be divisible by num_heads=3"),
        ("vocab_size=100", "vocab_size=100 is smaller than the 256 token ids"),
        ("grad_accum_steps=3", "grad_accum_steps=3 must divide the 32 sequences of a step"),
    ],
)
def test_a_bad_knob_fails_before_anything_starts_naming_the_knob_and_range(tmp_path, setting, message):
    out = tmp_path / "run"
    proc = p2pgolf("train", "--bench", "smoke", "--base", "smoke-tiny", "--set", setting, "--out", str(out), home=tmp_path, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert not out.exists()


def test_an_existing_run_directory_is_never_overwritten(smoke_run, tmp_path):
    _, out = smoke_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = p2pgolf("train", "--bench", "smoke", "--base", "smoke-tiny", "--budget", "2", "--out", str(out), home=tmp_path, timeout=60)
    assert proc.returncode == 1 and "already holds a run" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_artifact_over_the_size_cap_is_reported_as_oversize(tmp_path):
    # A 65,536-token embedding of width 320: about 21M int8 weights, over 16,000,000 bytes.
    out = tmp_path / "run"
    sets = ["vocab_size=65536", "model_dim=320", "train_seq_len=16", "train_batch_tokens=256"]
    args = [a for s in sets for a in ("--set", s)]
    proc = p2pgolf("train", "--bench", "smoke", "--base", "smoke-tiny", *args, "--budget", "1", "--eval-tokens", "256", "--out", str(out), home=tmp_path)
    assert proc.returncode == 1
    assert "over the size cap of 16,000,000 bytes" in proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "oversize" and "over the size cap" in result["error"]
    assert result["metrics"]["artifact_bytes"] > 16_000_000
    assert result["metrics"]["eval_partial"] is True and result["metrics"]["eval_tokens"] == 256


def test_a_run_that_fails_in_the_child_leaves_a_failed_result_naming_the_fix(tmp_path):
    out = tmp_path / "run"
    proc = p2pgolf(
        "train", "--bench", "parameter-golf/sp1024-10min", "--base", "cpu-small", "--budget", "5",
        "--data-dir", str(tmp_path / "nodata"), "--out", str(out), home=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    result = json.loads((out / "result.json").read_text())
    assert tuple(result) == RESULT_KEYS
    assert result["status"] == "failed" and result["metrics"] is None and result["artifact_sha256"] is None
    assert "p2pgolf data fetch" in result["error"] and "p2pgolf data fetch" in proc.stderr


def test_a_run_past_its_hard_deadline_is_stopped_and_reported_failed(tmp_path):
    import time

    from p2pgolf.trainer.api import run_experiment

    started = time.monotonic()
    outcome = run_experiment("smoke", "smoke-tiny", {}, budget_s=120, seed=0, out_dir=tmp_path / "run", timeout_s=4)
    assert time.monotonic() - started < 30
    assert outcome.status == "failed" and "hard deadline" in outcome.error
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"


def test_seed_comes_from_seed_or_set_seed_and_never_enters_the_diff():
    from p2pgolf.node.cli import UserError
    from p2pgolf.node.commands.train_cmd import parse_sets

    assert parse_sets(("seed=9", "model_dim=32"), None) == ({"model_dim": 32}, 9)
    assert parse_sets(("seed=9",), 9) == ({}, 9)
    with pytest.raises(UserError, match="disagree"):
        parse_sets(("seed=9",), 4)
    with pytest.raises(UserError, match="name=value"):
        parse_sets(("model_dim",), None)


def _kill_launcher_and_expect_its_children_gone(launcher: subprocess.Popen, pick, what: str) -> None:
    """Wait for the children of `launcher` that `pick` selects, kill -9 the launcher, and assert
    those children are gone within 10 s; clean up whatever is left either way."""
    import os
    import signal
    import time

    import psutil

    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while not children and time.monotonic() < deadline:
            children = [c for c in psutil.Process(launcher.pid).children() if pick(c)]
            time.sleep(0.2)
        assert children, f"the launcher never started {what}"
        time.sleep(1.0)  # let the child start watching
        os.kill(launcher.pid, signal.SIGKILL)  # the node dies without a chance to clean up
        launcher.wait(timeout=10)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"{what} outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        for c in children:
            if c.is_running():
                c.kill()


def test_a_run_whose_launcher_is_killed_stops_instead_of_training_to_its_deadline(tmp_path):
    launcher = subprocess.Popen(
        [*P2PGOLF_CLI, "--home", str(tmp_path),
         "train", "--bench", "smoke", "--base", "smoke-tiny", "--budget", "300", "--out", str(tmp_path / "run")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _kill_launcher_and_expect_its_children_gone(launcher, lambda c: "p2pgolf.trainer.runner" in " ".join(c.cmdline()), "the trainer child")


def test_a_silent_trainer_child_notices_its_launcher_died_and_stops_its_process_group():
    # The end-to-end case above can also end by a broken stdout pipe at the child's next progress
    # line; a child busy without output (compiling, a long evaluation, a torchrun worker) cannot.
    silent_child = (
        "import os, subprocess, sys, time\n"
        "from p2pgolf.trainer.runner import PARENT_ENV\n"
        "env = dict(os.environ, **{PARENT_ENV: str(os.getpid())})\n"
        "code = 'from p2pgolf.trainer.runner import _stop_when_orphaned; _stop_when_orphaned(); import time; time.sleep(120)'\n"
        "subprocess.Popen([sys.executable, '-c', code], env=env, start_new_session=True, stdout=subprocess.DEVNULL)\n"
        "time.sleep(120)\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", silent_child], cwd=Path(__file__).resolve().parents[1])
    _kill_launcher_and_expect_its_children_gone(launcher, lambda c: True, "the silent child")

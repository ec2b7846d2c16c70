"""An approved script runs in its own process group and directory, scrubbed, and is scored from its log."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import replace

import pytest

from p2pgolf.protocol.benchmarks import benchmark
from script_helpers import sample_byte_shards, script_bytes, wrapped
from p2pgolf.trainer.script_runner import SCRIPT_NAME, ScriptRun, _command, launch_script, score_from_log, script_framework, user_namespaces_work

SMOKE = benchmark("smoke")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return sample_byte_shards(tmp_path_factory.mktemp("sample-bytes"))


def run_of(script: bytes, data, **kw) -> ScriptRun:
    kw.setdefault("diff", {})
    return ScriptRun(script=script, bench=kw.pop("bench", SMOKE), tokenizer="byte256", seed=7, budget_s=kw.pop("budget_s", 60.0), data_path=str(data), device="cpu", **kw)


def test_a_tiny_script_trains_and_its_score_and_size_are_measured(data, tmp_path):
    script = script_bytes("tiny_golf.py")
    out = launch_script(run_of(script, data, diff={"ITERATIONS": 100, "LR": 0.01}), tmp_path / "run")
    assert out.status == "ok", out.error
    r = out.result
    assert r["base"] == "script:" + hashlib.sha256(script).hexdigest() and r["tokenizer"] == "byte256"
    assert r["diff"] == {"ITERATIONS": 100, "LR": 0.01}
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"val_bpb:{r['metrics']['val_bpb']:.8f}" in log.splitlines()[-1]  # the last exact line is the score
    assert 0 < r["metrics"]["val_bpb"] < 8.0  # an untrained byte model is at 8 bits per byte
    artifact = tmp_path / "run" / "artifact" / "final_model.int8.ptz"
    assert r["metrics"]["artifact_bytes"] == artifact.stat().st_size + len(script)  # measured, not printed
    assert r["artifact_sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert r["metrics"]["steps"] == 100
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == r


def test_the_wrapped_form_runs_the_same_script(data, tmp_path):
    script = wrapped(script_bytes("tiny_golf.py"))
    out = launch_script(run_of(script, data, diff={"ITERATIONS": 20}), tmp_path / "run")
    assert out.status == "ok", out.error
    assert out.result["metrics"]["steps"] == 20


def test_an_mlx_script_runs_with_plain_python_and_its_score_and_size_are_measured(data, tmp_path):
    script = script_bytes("tiny_golf_mlx.py")
    out = launch_script(run_of(script, data, diff={"ITERATIONS": 40}, backend="mlx"), tmp_path / "run")
    assert out.status == "ok", out.error
    r = out.result
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"val_bpb:{r['metrics']['val_bpb']:.8f}" in log.splitlines()[-1]
    assert 0 < r["metrics"]["val_bpb"] < 8.0 and r["metrics"]["steps"] == 40
    artifact = tmp_path / "run" / "artifact" / "final_model.int8.ptz"
    assert r["metrics"]["artifact_bytes"] == artifact.stat().st_size + len(script)


def test_an_mlx_script_is_found_through_its_wrapper_and_never_goes_under_torchrun(data):
    import sys

    mlx_script = wrapped(script_bytes("tiny_golf_mlx.py")).decode()
    assert script_framework(mlx_script) == "torch"  # the wrapper itself imports only lzma and base64
    from p2pgolf.protocol.script_hparams import read_hyperparameters

    inner = read_hyperparameters(mlx_script).inner_source
    assert script_framework(inner) == "mlx" and script_framework(script_bytes("tiny_golf.py").decode()) == "torch"
    assert script_framework("from mlx import core\n") == "mlx" and script_framework("import mlxtend\n") == "torch"
    eight_gpus = replace(run_of(b"", data, gpus=8), device="auto")
    assert _command(eight_gpus, "mlx") == [sys.executable, SCRIPT_NAME]
    assert _command(eight_gpus, "torch")[1:4] == ["-m", "torch.distributed.run", "--standalone"]


@pytest.mark.parametrize(("setting", "reason"), [({"backend": "torch"}, "--backend torch does not run"), ({"device": "cuda"}, "does not run on device 'cuda'")])
def test_an_mlx_script_is_refused_with_its_reason_where_mlx_cannot_run(data, tmp_path, setting, reason):
    run = run_of(wrapped(script_bytes("tiny_golf_mlx.py")), data)
    out = launch_script(replace(run, **setting), tmp_path / "run")
    assert out.status == "failed" and "imports mlx" in out.error and reason in out.error
    assert not (tmp_path / "run" / "log.txt").exists()  # refused before it started


def test_a_crash_is_one_failed_experiment_with_its_reason(data, tmp_path):
    out = launch_script(run_of(script_bytes("crashing.py"), data), tmp_path / "run")
    assert out.status == "failed"
    assert "exit code 1" in out.error and "CUDA out of memory" in out.error


def test_a_printed_score_with_an_oversize_artifact_is_refused(data, tmp_path):
    bench = benchmark("smoke")
    out = launch_script(run_of(script_bytes("oversize.py"), data, diff={"ARTIFACT_BYTES": 400_000}, bench=_capped(bench, 300_000)), tmp_path / "run")
    assert out.status == "oversize"
    assert "over the cap of 300000" in out.error
    assert out.result["metrics"]["artifact_bytes"] > 400_000


def test_no_score_line_is_a_failed_experiment(data, tmp_path):
    out = launch_script(run_of(script_bytes("no_score.py"), data), tmp_path / "run")
    assert out.status == "failed" and "no score line" in out.error


def test_a_diff_outside_the_vocabulary_never_runs(data, tmp_path):
    out = launch_script(run_of(script_bytes("crashing.py"), data, diff={"NOT_READ": 1}), tmp_path / "run")
    assert out.status == "failed" and "unknown hyperparameter 'NOT_READ'" in out.error
    assert not (tmp_path / "run" / "log.txt").exists()


def test_the_script_cannot_read_the_node_key(data, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    key = home / "identity.key"
    key.write_text("p2pgolf-ed25519-seed-v1\nSECRETSECRET\n")
    monkeypatch.setenv("P2PGOLF_HOME", str(home))  # the node's own environment: must not leak
    diff = {"KEY_PATH": str(key)} if user_namespaces_work() else {}
    out = launch_script(run_of(script_bytes("reads_key.py"), data, diff=diff, hide=(str(home),)), tmp_path / "run")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert out.status == "ok", out.error
    assert "stolen_keys:0" in log and "SECRET" not in log
    assert out.isolated == user_namespaces_work()
    assert key.read_text().endswith("SECRETSECRET\n")  # hidden, not harmed


def test_data_inside_the_hidden_home_is_still_readable(tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    (home / "identity.key").write_text("SECRET\n")
    shards = sample_byte_shards(home / "data")
    out = launch_script(run_of(script_bytes("tiny_golf.py"), shards, diff={"ITERATIONS": 10}, hide=(str(home),)), tmp_path / "run")
    assert out.status == "ok", out.error


def test_cancel_and_deadline_stop_the_script(data, tmp_path):
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    out = launch_script(run_of(script_bytes("tiny_golf.py"), data, diff={"ITERATIONS": 2400}), tmp_path / "a", cancel=cancel)
    assert out.status == "abandoned"
    out = launch_script(run_of(script_bytes("tiny_golf.py"), data, diff={"ITERATIONS": 2400}), tmp_path / "b", timeout_s=1.5)
    assert out.status == "failed" and "hard deadline" in out.error


def test_score_rule_takes_the_last_exact_line():
    log = "val_bpb:9\nfinal_int8_zlib_roundtrip val_loss:2.1 val_bpb:1.3\nfinal_int8_zlib_roundtrip_exact val_loss:2.10000000 val_bpb:1.30000000\n"
    assert score_from_log(log) == (2.1, 1.3, "final_int8_zlib_roundtrip_exact")
    later = log + "final_sliding_window_exact val_loss:2.0 val_bpb:1.2\n"
    assert score_from_log(later) == (2.0, 1.2, "final_sliding_window_exact")
    assert score_from_log("final_int8_zlib_roundtrip val_loss:2.1 val_bpb:1.3\n") is None
    assert score_from_log("final_x_exact val_loss:nan val_bpb:nan\n") is None


def _capped(bench, cap):
    return replace(bench, size_cap=cap)


def test_the_script_dies_with_the_process_that_launched_it(data, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from conftest import REPO_ROOT
    from node_procs import wait_until

    (tmp_path / "long.py").write_bytes(script_bytes("tiny_golf.py"))
    launcher = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/tests']\n"
            "from pathlib import Path\nfrom p2pgolf.protocol.benchmarks import benchmark\nfrom p2pgolf.trainer.script_runner import ScriptRun, launch_script\n"
            "run = ScriptRun(script=Path(sys.argv[2]).read_bytes(), bench=benchmark('smoke'), tokenizer='byte256', seed=1, budget_s=600.0,"
            " data_path=sys.argv[3], device='cpu', diff={'ITERATIONS': 2400, 'BATCH_SIZE': 128})\nlaunch_script(run, sys.argv[4])\n"
        ), str(REPO_ROOT), str(tmp_path / "long.py"), str(data), str(tmp_path / "run")],
    )  # fmt: skip
    try:
        def script_procs():
            """The script's own interpreter (not the guard, not the namespace's shell)."""
            out = []
            for p in psutil.Process(launcher.pid).children(recursive=True):
                try:
                    cmd = p.cmdline()
                except psutil.Error:  # exec'ing or gone
                    continue
                if cmd and cmd[-1] == "train_gpt.py" and not any("script_guard" in c or c.endswith("sh") for c in cmd[:3]):
                    out.append(p)
            return out

        wait_until(lambda: len(script_procs()) == 1, 60, interval=0.2, what="the script to start")
        (script,) = script_procs()
        os.kill(launcher.pid, signal.SIGKILL)  # the node dies without any clean-up
        launcher.wait(10)
        wait_until(lambda: not script.is_running() or script.status() == psutil.STATUS_ZOMBIE, 20, interval=0.2, what="the orphaned script to stop")
    finally:
        if launcher.poll() is None:
            launcher.kill()

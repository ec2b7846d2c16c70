"""Budgets that hold, as a new user meets them: `train` on smoke without --base picks a base that
fits, stops within about a micro-batch of its budget and says which benchmark it counts for; a
config whose step cannot fit is refused naming the knobs, before anything runs; Ctrl-C leaves a
result.json that says what happened."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer_helpers import P2PGOLF_CLI, p2pgolf  # also: one torch thread, for the children too
from p2pgolf.protocol import knobs
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.records import HardwareClass
from p2pgolf.trainer.config import make_run_config
from p2pgolf.trainer.run_history import PastRun, past_runs
from p2pgolf.trainer.step_budget import BudgetError, check_step_fits, default_base, estimate_step

CPU2 = HardwareClass("cpu", "Test CPU", 2, 8192)
H100 = HardwareClass("cuda", "NVIDIA H100 80GB HBM3", 1, 81559)


def test_train_on_smoke_without_base_fits_its_budget_and_names_the_benchmark_it_counts_for(tmp_path):
    out = tmp_path / "run"
    proc = p2pgolf("train", "--bench", "smoke", "--budget", "3", "--eval-tokens", "4096", "--out", str(out), home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert "base: smoke-tiny (default here)" in proc.stdout
    # --budget 3 is another benchmark than the network's smoke, and the run's files say so
    assert "count for benchmark smoke@3s" in proc.stdout and "do not mix with smoke's" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    result = json.loads((out / "result.json").read_text())
    assert config["bench_name"] == result["bench_name"] == "smoke@3s"
    assert config["bench"] == result["bench"] == benchmark("smoke@3s").id != benchmark("smoke").id
    metrics = json.loads((out / "metrics.json").read_text())
    assert result["status"] == "ok" and metrics["steps"] >= 1
    micro_s = metrics["training_seconds"] / metrics["micro_batches"]
    assert metrics["training_seconds"] <= 3.0 + micro_s  # within a micro-batch of the budget
    assert "loaded smoke@3s data" in proc.stderr  # progress before training, not one frozen line


def test_the_standard_budget_keeps_the_plain_benchmark_name():
    run = make_run_config("smoke@60s", "smoke-tiny", {})
    assert run.bench_name == "smoke" and run.bench.id == benchmark("smoke").id
    assert make_run_config("smoke", "smoke-tiny", {}, budget_s=30).bench_name == "smoke@30s"


def test_a_step_that_cannot_fit_is_refused_before_anything_runs_naming_the_knobs(tmp_path):
    # the case: the challenge's naive baseline on a CPU under a 30 s budget
    out = tmp_path / "run"
    proc = p2pgolf(
        "train", "--bench", "parameter-golf/sp1024-10min", "--base", "naive-baseline", "--device", "cpu",
        "--budget", "30", "--out", str(out), home=tmp_path / "home",
    )  # fmt: skip
    assert proc.returncode == 1
    message = proc.stderr.strip().splitlines()[-1]
    for named in ("train_batch_tokens", "num_layers", "model_dim", "grad_accum_steps", "--base cpu-small", "30s budget"):
        assert named in message, named
    assert "takes about" in message and not out.exists()  # refused before a run directory was made


def test_the_refusal_suggests_a_batch_that_would_fit_or_says_the_model_must_shrink():
    config = {**knobs.base_config("cpu-small"), "train_batch_tokens": 1 << 20}
    with pytest.raises(BudgetError, match=r"e\.g\. --set train_batch_tokens=(\d+)") as refused:
        check_step_fits(config, 30.0, CPU2)
    suggested = int(refused.value.args[0].split("train_batch_tokens=")[1].split(")")[0])
    smaller = {**config, "train_batch_tokens": suggested}
    assert estimate_step(smaller, CPU2).seconds * 10 <= 30.0
    check_step_fits(smaller, 30.0, CPU2)  # and it is not refused
    with pytest.raises(BudgetError, match="make the model smaller .*even one sequence of train_seq_len=1024"):
        check_step_fits(knobs.base_config("naive-baseline"), 30.0, CPU2)


def test_the_default_base_follows_the_benchmark_and_the_hardware():
    assert default_base(benchmark("smoke"), H100) == default_base(benchmark("smoke@30s"), CPU2) == "smoke-tiny"
    challenge = benchmark("parameter-golf/sp1024-10min")
    assert default_base(challenge, H100) == "naive-baseline"  # the challenge on a GPU: the baseline
    assert default_base(challenge, CPU2) == "cpu-small"  # slow hardware: a base whose step fits many times
    for base in ("smoke-tiny", "cpu-small"):
        assert estimate_step(knobs.base_config(base), CPU2).seconds * 100 <= 600


def test_this_nodes_own_history_sets_the_rate_of_the_estimate():
    config = knobs.base_config("cpu-small")
    shape = knobs.throughput_shape(config)
    flops = knobs.training_flops_per_token(config)
    fast = PastRun(Path("r1"), CPU2.key, shape, 1e6, 1e6 * flops, degraded=False)
    slowed = PastRun(Path("r2"), CPU2.key, shape, 1e9, 1e9 * flops, degraded=True)  # not believed
    other = PastRun(Path("r3"), H100.key, shape, 1e9, 1e9 * flops, degraded=False)  # another class
    est = estimate_step(config, CPU2, [fast, slowed, other])
    assert est.flops_per_s == pytest.approx(1e6 * flops) and "earlier run" in est.source
    assert est.seconds == pytest.approx(config["train_batch_tokens"] / 1e6)


def _fake_history(runs: Path, hw: HardwareClass, config_base: str, diff: dict, tokens_per_s: float) -> None:
    """A finished run directory as an earlier run of this node would have left it."""
    run_dir = runs / "00000000-000000-fake"
    run_dir.mkdir(parents=True)
    result = {"status": "ok", "base": config_base, "diff": diff, "hw": hw.to_wire(), "throughput": {"tokens_per_s": tokens_per_s, "degraded": False}}
    (run_dir / "result.json").write_text(json.dumps(result))


def test_a_first_step_measured_to_overrun_is_refused_after_one_micro_batch(tmp_path):
    from p2pgolf.trainer.hardware import detect_hardware
    from p2pgolf.trainer.runner import launch

    diff = {"train_batch_tokens": 262144, "grad_accum_steps": 64}  # 64 micro-batches of 4,096 tokens
    runs = tmp_path / "runs"
    # an (impossibly fast) history makes the estimate pass, so only the measurement can refuse
    _fake_history(runs, detect_hardware("cpu"), "smoke-tiny", diff, 1e12)
    assert len(past_runs(runs)) == 1
    run = make_run_config("smoke", "smoke-tiny", diff, budget_s=0.5, device="cpu", backend="torch", eval_token_cap=4096)
    outcome = launch(run, runs / "measured", timeout_s=120)
    assert outcome.status == "failed"
    assert "as measured" in outcome.error and "train_batch_tokens" in outcome.error and "grad_accum_steps" in outcome.error


@pytest.mark.parametrize("backend", ["torch", pytest.param("mlx", marks=pytest.mark.skipif(importlib.util.find_spec("mlx") is None, reason="mlx is not installed"))])
def test_a_long_step_is_cut_at_a_micro_batch_when_the_budget_runs_out(tmp_path, backend):
    from p2pgolf.trainer.runner import launch

    # one step is 8 micro-batches; under the old step-granular clock the run overran by a step
    # (MLX on a CPU is several times slower than torch: smaller micro-batches keep it quick)
    step_tokens = 32768 if backend == "torch" else 8192
    run = make_run_config("smoke", "smoke-tiny", {"train_batch_tokens": step_tokens, "grad_accum_steps": 8}, budget_s=4.0, device="cpu", backend=backend, eval_token_cap=4096)
    outcome = launch(run, tmp_path / "runs" / "long", timeout_s=120)
    assert outcome.ok, outcome.error
    m = outcome.metrics
    micro_s = m["training_seconds"] / m["micro_batches"]
    assert m["training_seconds"] <= 4.0 + 1.5 * micro_s
    assert m["train_tokens"] == m["micro_batches"] * step_tokens // 8  # only the micro-batches trained count
    log = (outcome.run_dir / "log.txt").read_text()
    assert "micro_batch:" in log  # progress inside the long step


def test_ctrl_c_during_train_leaves_a_result_that_says_so(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*P2PGOLF_CLI, "--home", str(tmp_path / "home"), "train", "--bench", "smoke", "--budget", "60", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "step:" not in _read(out / "log.txt"):
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "abandoned" in stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "abandoned" and "Ctrl-C" in result["error"] and "while training" in result["error"]


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""



if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

"""`p2pgolf train --backend mlx` end to end on the smoke benchmark: the run directory a torch run
writes, a result that names the MLX trainer, and an artifact that torch scores the same."""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("mlx.core")

from p2pgolf.protocol.records import HardwareClass, Metrics  # noqa: E402
from p2pgolf.trainer.runner import RESULT_KEYS  # noqa: E402
from trainer_helpers import p2pgolf  # noqa: E402

EVAL_TOKENS = 4096


@pytest.fixture(scope="module")
def mlx_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    out = home / "run"
    sets = ["train_batch_tokens=1024", "train_seq_len=64"]
    proc = p2pgolf(
        "train", "--bench", "smoke", "--base", "smoke-tiny", *[a for s in sets for a in ("--set", s)],
        "--budget", "3", "--backend", "mlx", "--device", "cpu", "--eval-tokens", str(EVAL_TOKENS), "--seed", "2",
        "--out", str(out), home=home,
    )  # fmt: skip
    return proc, out


def test_mlx_run_writes_the_run_directory_with_the_agreed_result(mlx_run):
    proc, out = mlx_run
    assert proc.returncode == 0, proc.stderr
    assert "status: ok" in proc.stdout.splitlines()
    for name in ("config.json", "log.txt", "metrics.json", "model.p2pgolf", "result.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert tuple(result) == RESULT_KEYS
    assert result["trainer"].startswith("p2pgolf-mlx/")
    assert result["status"] == "ok" and result["error"] is None
    metrics = Metrics.from_wire(result["metrics"])
    HardwareClass.from_wire(result["hw"])
    assert result["hw"]["accel"] == "cpu"  # trained on the CPU, so a CPU result
    assert metrics.steps > 0 and metrics.train_tokens == metrics.steps * 1024
    assert metrics.eval_tokens == EVAL_TOKENS and metrics.eval_partial
    assert result["artifact_sha256"] == hashlib.sha256((out / "model.p2pgolf").read_bytes()).hexdigest()
    full = json.loads((out / "metrics.json").read_text())
    assert full["backend"] == "mlx" and full["device"] == "mlx:cpu"
    assert "backend:mlx" in (out / "log.txt").read_text()


def test_torch_verifies_the_mlx_claim_from_the_artifact_file(mlx_run):
    import torch

    from p2pgolf.trainer.config import RunConfig
    from p2pgolf.trainer.datasets import load_benchmark_data
    from p2pgolf.trainer.run_torch import evaluate_artifact

    _, out = mlx_run
    run = RunConfig.from_json(json.loads((out / "config.json").read_text()))
    data = load_benchmark_data(run.bench, None)
    again = evaluate_artifact((out / "model.p2pgolf").read_bytes(), run, data, torch.device("cpu"))
    claimed = json.loads((out / "result.json").read_text())["metrics"]
    assert again.tokens == claimed["eval_tokens"]
    assert abs(again.val_bpb - claimed["val_bpb"]) < 1e-4
    assert claimed["val_bpb"] < 7.0  # trained: below the 8 bits of a uniform byte guess


def test_a_device_mlx_cannot_use_is_refused_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    proc = p2pgolf(
        "train", "--bench", "smoke", "--base", "smoke-tiny", "--budget", "1", "--backend", "mlx", "--device", "cuda",
        "--out", str(out), home=tmp_path, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "device 'cuda' is not one the mlx backend runs on" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()

"""Several devices (DDP, here two CPU processes over gloo) train exactly like one device with the
same global batch: the multi-GPU path, exercised without a GPU."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from trainer_helpers import build_fineweb, tiny_config

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    import torch.distributed as dist

    from p2pgolf.trainer.datasets import custom_benchmark, load_benchmark_data
    from p2pgolf.trainer.train_torch import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = load_benchmark_data(custom_benchmark(data_dir), data_dir)
        result = train(tiny_config(grad_accum_steps=1), data.train_stream, budget_s=120.0, seed=11, max_steps=STEPS)
        np.savez(f"{out}/rank{rank}.npz", losses=np.array(result.losses), tokens=result.train_tokens, **result.state)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_two_gloo_ranks_train_like_one_process_with_the_same_global_batch(tmp_path):
    from p2pgolf.trainer.train_torch import train

    data_dir = tmp_path / "data"
    data = build_fineweb(data_dir)
    mp.start_processes(_rank_main, args=(2, _free_port(), str(data_dir), str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    rank0, rank1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    # One process, two micro-batches: it reads the same token spans as the two ranks together.
    single = train(tiny_config(grad_accum_steps=2), data.train_stream, budget_s=120.0, seed=11, max_steps=STEPS)
    assert int(rank0["tokens"]) == single.train_tokens == STEPS * 2048
    for name, value in single.state.items():
        assert np.array_equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
        assert np.allclose(rank0[name], value, atol=2e-4), name
    # Rank losses are each rank's own half-batch; their mean is the one-process loss.
    assert np.allclose((rank0["losses"] + rank1["losses"]) / 2, single.losses, atol=1e-4)


@pytest.mark.timeout(180)
def test_a_run_under_torchrun_trains_on_two_ranks_and_rank_zero_writes_the_result(tmp_path):
    # What the runner does on a machine with several GPUs, here with two CPU ranks over gloo.
    import json
    import os
    import subprocess
    import sys

    from p2pgolf.trainer.api import prepare_run
    from p2pgolf.trainer.runner import RESULT_KEYS

    run = prepare_run("smoke", "smoke-tiny", {}, budget_s=3, seed=2, backend="torch", device="cpu")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(run.to_json()))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "p2pgolf.trainer.runner", str(run_dir)],
        capture_output=True, text=True, timeout=150, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run_dir / "result.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert tuple(result) == RESULT_KEYS and result["status"] == "ok", result["error"]
    assert metrics["world_size"] == 2
    # The global batch is the config's 4096 tokens per step, split over the two ranks.
    assert result["metrics"]["train_tokens"] == result["metrics"]["steps"] * 4096
    assert metrics["micro_batch_tokens"] * metrics["grad_accum_steps"] == 2048
    # Evaluation was split between the ranks and summed: every validation target was scored.
    assert result["metrics"]["eval_tokens"] == metrics["eval_bytes"] > 90_000 and not result["metrics"]["eval_partial"]
    # ... and summed right: one process scoring the artifact file gets the same number.
    import torch

    from p2pgolf.trainer.datasets import load_benchmark_data
    from p2pgolf.trainer.run_torch import evaluate_artifact

    alone = evaluate_artifact((run_dir / "model.p2pgolf").read_bytes(), run, load_benchmark_data(run.bench, None), torch.device("cpu"))
    assert alone.val_bpb == pytest.approx(result["metrics"]["val_bpb"], rel=1e-6)

"""What only a Mac's GPU can show: auto picks it, bfloat16 training on Metal tracks float32 on the
CPU, and the hardware class names the chip and its memory. Skipped, with the reason, elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

pytestmark = pytest.mark.skipif(not mx.metal.is_available(), reason="needs an Apple GPU (Metal); mlx[cpu] has none")


def test_auto_device_is_the_apple_gpu_and_the_hardware_class_names_the_chip():
    from p2pgolf.trainer.hardware import detect_hardware
    from p2pgolf.trainer.train_mlx import select_device

    try:
        assert select_device("auto") == "gpu"
    finally:
        mx.set_default_device(mx.cpu)
    hw = detect_hardware("mps")
    assert hw.accel == "mps" and hw.model.startswith("Apple M") and hw.count == 1
    assert hw.memory_mib >= 8 * 1024


def test_bf16_training_on_metal_tracks_fp32_on_the_cpu():
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.protocol.knobs import resolve
    from p2pgolf.trainer.datasets import load_benchmark_data
    from p2pgolf.trainer.model_mlx import build_model, state_dict_numpy
    from p2pgolf.trainer.train_mlx import train

    config = resolve("smoke-tiny", {"train_batch_tokens": 1024, "train_seq_len": 64})
    data = load_benchmark_data(benchmark("smoke"), None)
    start = state_dict_numpy(build_model(config, seed=0))
    common = dict(budget_s=600, seed=0, max_steps=6, initial_state=start)
    try:
        on_gpu = train(config, data.train_stream, device="mps", **common)
    finally:
        mx.set_default_device(mx.cpu)
    on_cpu = train(config, data.train_stream, device="cpu", **common)
    assert on_gpu.extra["device"] == "gpu" and on_cpu.extra["device"] == "cpu"
    np.testing.assert_allclose(on_gpu.losses, on_cpu.losses, rtol=0, atol=0.05)
    assert on_gpu.losses[-1] < on_gpu.losses[0] - 0.5

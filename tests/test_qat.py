"""Quantisation-aware training (trainer/qat.py) in the torch backend: the fake quantiser's grid
and straight-through gradient, which matrices train through it, and when it is on. (MLX takes the
same steps: test_mlx_parity.py's qat variant.)"""

from __future__ import annotations

import pytest
import torch

from p2pgolf.protocol import knobs
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.trainer import train_torch
from p2pgolf.trainer.datasets import load_benchmark_data
from p2pgolf.trainer.model_torch import QuantisableLinear, build_model, fake_quantise
from p2pgolf.trainer.qat import qat_bits, qat_on

TINY = {"num_layers": 2, "model_dim": 16, "num_heads": 2, "num_kv_heads": 1, "train_seq_len": 16, "train_batch_tokens": 256}


def test_fake_quantised_weights_sit_on_each_rows_grid_and_the_gradient_passes_straight_through():
    torch.manual_seed(0)
    layer = QuantisableLinear(32, 8)
    w = layer.weight.detach().clone()
    q = fake_quantise(w, 4, 2.0**-14)
    scale = w.abs().amax(dim=1, keepdim=True) / 7
    codes = q / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4) and float(codes.abs().max()) <= 7 + 1e-4
    assert len(torch.unique(q[0])) <= 15 and not torch.equal(q, w)
    x = torch.randn(4, 32)
    layer.qat_bits, layer.qat_floor = 4, 2.0**-14
    out = layer(x)
    assert torch.allclose(out, x @ q.T, atol=1e-6)  # the forward uses the quantised weight
    out.sum().backward()
    # straight through: the float weight gets the gradient the quantised one would have
    assert torch.allclose(layer.weight.grad, torch.ones(4, 8).T @ x, atol=1e-5)


def test_the_matrices_that_train_quantised_are_the_block_matrices_at_their_export_bits():
    config = knobs.resolve("smoke-tiny", {**TINY, "qat": "full", "quant_bits": 6, "mlp_precision": "int4", "fp16_max_numel": 256})
    shapes = {name: tuple(p.shape) for name, p in build_model(config).named_parameters()}
    bits = qat_bits(config, shapes)
    assert bits == {name: 4 if ".mlp." in name else 6 for name, shape in shapes.items()
                    if name.startswith("blocks.") and len(shape) == 2 and shape[0] * shape[1] > 256 and "resid_mix" not in name}  # fmt: skip
    assert bits and "tok_emb.weight" not in bits
    assert qat_bits(knobs.resolve("smoke-tiny", TINY), shapes) == {}


def test_late_qat_waits_for_the_warmdown_not_the_warmup():
    config = knobs.resolve("smoke-tiny", {"qat": "late", "qat_from_lr_scale": 0.5, "warmup_steps": 4})
    assert [qat_on(config, step, lr) for step, lr in ((0, 0.25), (3, 1.0), (5, 0.6), (6, 0.4))] == [False, False, False, True]
    assert qat_on(knobs.resolve("smoke-tiny", {"qat": "full"}), 0, 1.0)


@pytest.fixture(scope="module")
def data():
    return load_benchmark_data(benchmark("smoke"), None)


def _train(data, diff, steps=3):
    lines: list[str] = []
    result = train_torch.train(knobs.resolve("smoke-tiny", {**TINY, "quant_bits": 4, **diff}), data.train_stream, budget_s=1000.0, seed=0,
                               device="cpu", max_steps=steps, compile_model=False, log=lines.append)  # fmt: skip
    return result.state, lines


def test_full_qat_changes_training_and_late_qat_below_its_threshold_does_not(data):
    plain, _ = _train(data, {})
    full, log = _train(data, {"qat": "full"})
    late, late_log = _train(data, {"qat": "late"})  # LR stays at 1 in a 1000 s budget: never on
    assert any(line.startswith("qat: on at step 0") for line in log)
    assert max(float(abs(full[k] - plain[k]).max()) for k in plain) > 1e-4
    assert all((late[k] == plain[k]).all() for k in plain) and not any("qat:" in line for line in late_log)

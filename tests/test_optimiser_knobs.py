"""The records' optimiser knobs in the torch backend: Polar Express coefficients, MuonEq-R row
normalisation, AdamW decay on the Adam groups, and SWA. (MLX takes the same steps:
test_mlx_parity.py's record-optimiser variant; each knob changes MLX's weights: test_mlx_knobs.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pgolf.protocol import knobs
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.trainer import train_torch
from p2pgolf.trainer.datasets import load_benchmark_data
from p2pgolf.trainer.model_spec import parameter_role
from p2pgolf.trainer.model_torch import build_model
from p2pgolf.trainer.muon_coefficients import coefficients
from p2pgolf.trainer.muon_torch import Muon, newton_schulz, normalise_rows

TINY = {"num_layers": 2, "model_dim": 16, "num_heads": 2, "num_kv_heads": 1, "train_seq_len": 16, "train_batch_tokens": 256}


def _singular_values(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(x.float())


def test_polar_express_brings_singular_values_closer_to_one_in_five_steps():
    torch.manual_seed(0)
    g = torch.randn(64, 128)
    quintic = _singular_values(newton_schulz(g, 5, coeffs="quintic"))
    polar = _singular_values(newton_schulz(g, 5, coeffs="polar_express"))
    assert float((polar - 1).abs().max()) < 0.5 * float((quintic - 1).abs().max())
    assert float(quintic.min()) < 0.7 < 0.85 < float(polar.min())


def test_polar_express_repeats_its_last_tuple_past_five_steps_and_unknown_sets_fail():
    seven = coefficients("polar_express", 7)
    assert seven[4] == seven[5] == seven[6] != seven[0]
    assert coefficients("quintic", 3) == [(3.4445, -4.7750, 2.0315)] * 3
    with pytest.raises(ValueError, match="not one of quintic, polar_express"):
        coefficients("cubic", 5)


def _one_muon_step(grad: torch.Tensor, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros_like(grad))
    p.grad = grad.clone()
    Muon([p], lr=1.0, momentum=0.0, backend_steps=5, **kw).step()
    return -p.detach()


def test_row_normalisation_orthogonalises_the_update_with_unit_rows():
    torch.manual_seed(1)
    grad = torch.randn(32, 64) * torch.logspace(-3, 1, 32)[:, None]  # rows of very different sizes
    rows = normalise_rows(grad).norm(dim=1)
    assert torch.allclose(rows, torch.ones(32), atol=1e-6)
    plain = _one_muon_step(grad)
    eq_r = _one_muon_step(grad, row_normalize=True)
    assert torch.allclose(eq_r, newton_schulz(normalise_rows(grad), 5), atol=1e-6)
    assert float((eq_r - plain).abs().max()) > 1e-2
    # quiet rows get a real share of the update instead of almost none
    assert float(eq_r[0].norm()) > 5 * float(plain[0].norm())


@pytest.mark.parametrize("knob,roles", [("adam_weight_decay", {"scalar", "head"}), ("embed_weight_decay", {"embed"})])
def test_adamw_decay_shrinks_only_its_groups_by_lr_times_decay(knob, roles):
    config = knobs.resolve("smoke-tiny", {**TINY, "tie_embeddings": False, knob: 0.25})
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # no zeros, so a decay shows everywhere it applies
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimisers, _ = train_torch._optimisers(model, config, fused=False)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: Adam moves nothing, only the decay acts
    for opt in optimisers:
        opt.step()
    lr = {"scalar": config["scalar_lr"], "head": config["head_lr"], "embed": config["embed_lr"]}
    seen = set()
    for name, p in model.named_parameters():
        role = parameter_role(name, tuple(p.shape))
        if role in roles:
            seen.add(role)
            assert torch.allclose(p, before[name] * (1 - lr[role] * 0.25), atol=1e-7), name
        elif role != "muon":  # Muon orthogonalises a zero gradient into a non-zero update
            assert torch.equal(p, before[name]), name
    assert seen == roles


def _train(config, steps):
    data = load_benchmark_data(benchmark("smoke"), None)
    return train_torch.train(config, data.train_stream, budget_s=3600.0, seed=0, device="cpu", max_steps=steps, compile_model=False).state


def test_swa_final_weights_are_the_mean_of_the_snapshots_below_the_lr_threshold():
    # A 4-step warm-up runs at LR 0.25, 0.5, 0.75, 1.0: the weights after steps 1-3 are
    # snapshots (LR below 1.0), the 4th step's are not.
    plain = knobs.resolve("smoke-tiny", {**TINY, "warmup_steps": 4})
    swa = knobs.resolve("smoke-tiny", {**TINY, "warmup_steps": 4, "swa_every": 1, "swa_start_lr_scale": 1.0})
    after = [_train(plain, k) for k in (1, 2, 3, 4)]
    averaged = _train(swa, 4)
    for name in averaged:
        want = np.mean([after[k][name] for k in range(3)], axis=0)
        np.testing.assert_allclose(averaged[name], want, rtol=0, atol=1e-6, err_msg=name)
    assert max(float(np.abs(averaged[k] - after[3][k]).max()) for k in averaged) > 1e-3


def test_swa_and_ema_together_are_refused_naming_both():
    with pytest.raises(ProtocolError, match="swa_every=5 and ema_decay=0.99"):
        knobs.resolve("smoke-tiny", {"swa_every": 5, "ema_decay": 0.99})


def test_the_muon_weight_decay_taper_reaches_the_training_loop():
    # a taper to zero over the whole budget with a large decay: every step decays a little less
    # than the untapered run, so the weights differ; without the taper they would be identical
    common = {**TINY, "muon_weight_decay": 1.0, "matrix_lr": 0.5}
    data = load_benchmark_data(benchmark("smoke"), None)
    run = lambda diff: train_torch.train(knobs.resolve("smoke-tiny", {**common, **diff}), data.train_stream, budget_s=2.0, seed=0,  # noqa: E731
                                         device="cpu", max_steps=3, compile_model=False).state  # fmt: skip
    plain, tapered = run({}), run({"wd_taper_from_frac": 0.0, "wd_taper_final_mult": 0.0})
    assert max(float(np.abs(plain[k] - tapered[k]).max()) for k in plain) > 1e-5

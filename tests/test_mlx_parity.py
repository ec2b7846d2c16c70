"""MLX against torch: same weights give the same logits, and the same initial weights with the same
batches give the same training losses and weights, for every activation and recurrence variant.

Tolerances (float32 on the CPU): logits within 1e-4; per-step training loss within 1e-4 nats;
weights after the steps within 1e-3 (Newton-Schulz amplifies float rounding a little).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")

from p2pgolf.protocol.benchmarks import benchmark  # noqa: E402
from p2pgolf.protocol.knobs import resolve  # noqa: E402
from p2pgolf.trainer import model_mlx, model_torch, train_mlx, train_torch  # noqa: E402
from p2pgolf.trainer.datasets import load_benchmark_data  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A small model that still has every part: 4 heads over 2 KV heads, skips, both Adam groups.
SMALL = {
    "model_dim": 32,
    "num_heads": 4,
    "num_kv_heads": 2,
    "train_seq_len": 32,
    "train_batch_tokens": 256,
    "warmup_steps": 2,
    "muon_momentum_warmup_steps": 2,
}
VARIANTS = {
    "relu2": {"activation": "relu2"},
    "leaky_relu2": {"activation": "leaky_relu2", "leaky_slope": 0.3},
    "swiglu": {"activation": "swiglu"},
    "cycle": {"num_layers": 5, "unique_blocks": 2, "recurrence": "cycle"},
    "mirror": {"num_layers": 5, "unique_blocks": 2, "recurrence": "mirror"},
    "untied-uncapped": {"tie_embeddings": False, "logit_softcap": 0.0},
    "looped-segment": {"num_layers": 5, "num_loops": 2, "loop_start": 1, "loop_end": 2},
    "qat": {"qat": "full", "quant_bits": 5, "mlp_precision": "int4"},
    "record-structure": {"xsa_last_n": 1, "rope_dims": 4, "ln_scale": True, "smear_gate": True, "skip_gates": True,
                         "bigram_buckets": 64, "bigram_dim": 16},
    "bigram-unprojected": {"bigram_buckets": 32, "bigram_dim": 32},
    "value-embeddings": {"num_layers": 3, "ve_last_n": 2, "ve_dim": 8},
    "value-embeddings-unprojected": {"ve_last_n": 1, "ve_dim": 16},  # kv width 2 heads x 8
    "parallel-lanes": {"num_layers": 5, "parallel_from": 3, "skip_gates": True, "ve_last_n": 2, "ve_dim": 8},
}
# The optimiser's optional parts on top: accumulation, clipping, weight decay, EMA, untied groups.
OPTIMISER_EXTRAS = {
    "grad_accum_steps": 2,
    "grad_clip_norm": 0.5,
    "muon_weight_decay": 0.05,
    "ema_decay": 0.5,
    "tie_embeddings": False,
}
# The records' optimiser parts: MuonEq-R, Polar Express, AdamW on the Adam groups, and SWA (every
# step's LR is below 1 during the 4-step warm-up, so all four steps are snapshots).
RECORD_OPTIMISER = {
    "muon_row_normalize": True,
    "muon_ns_coeffs": "polar_express",
    "adam_weight_decay": 0.05,
    "embed_weight_decay": 0.05,
    "swa_every": 1,
    "swa_start_lr_scale": 1.0,
    "warmup_steps": 4,
}


def _text_ids(shape: tuple[int, int]) -> np.ndarray:
    text = (DATA / "tinyshakespeare.txt").read_bytes()[: shape[0] * shape[1]]
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64).reshape(shape)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_same_weights_give_the_same_logits(variant):
    config = resolve("smoke-tiny", {**SMALL, **VARIANTS[variant]})
    torch.manual_seed(1)
    reference = model_torch.build_model(config)
    rng = np.random.default_rng(1)
    # Output projections start at zero; perturb every weight so each path carries signal.
    state = {k: v + rng.normal(0.0, 0.05, v.shape).astype(np.float32) for k, v in train_torch.state_to_numpy(reference).items()}
    train_torch.load_numpy_state(reference, state)
    model = model_mlx.build_model(config)
    model_mlx.load_state_dict_numpy(model, state)
    ids = _text_ids((2, 48))
    expected = reference.logits(torch.from_numpy(ids)).detach().numpy()
    got = np.array(model.logits(mx.array(ids.astype(np.int32))))
    assert got.shape == expected.shape == (2, 48, config["vocab_size"])
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected).max() > 0.1  # the comparison is not between two near-zero tensors


@pytest.mark.parametrize("variant", [*sorted(VARIANTS), "optimiser-extras", "record-optimiser"])
def test_same_start_and_batches_give_the_same_training_steps(variant):
    diff = {"optimiser-extras": OPTIMISER_EXTRAS, "record-optimiser": RECORD_OPTIMISER}.get(variant) or VARIANTS[variant]
    config = resolve("smoke-tiny", {**SMALL, **diff})
    data = load_benchmark_data(benchmark("smoke"), None)
    start = model_mlx.state_dict_numpy(model_mlx.build_model(config, seed=3))
    common = dict(budget_s=3600.0, seed=0, device="cpu", max_steps=4, initial_state=start)
    ours = train_mlx.train(config, data.train_stream, **common)
    theirs = train_torch.train(config, data.train_stream, **common)
    assert ours.steps == theirs.steps == 4
    assert ours.grad_accum_steps == theirs.grad_accum_steps
    if config["grad_accum_steps"]:
        assert ours.grad_accum_steps == config["grad_accum_steps"]
    np.testing.assert_allclose(ours.losses, theirs.losses, rtol=0, atol=1e-4)
    assert sorted(ours.state) == sorted(theirs.state)
    for name in ours.state:
        np.testing.assert_allclose(ours.state[name], theirs.state[name], rtol=0, atol=1e-3, err_msg=name)
    moved = max(float(np.abs(ours.state[k] - start[k]).max()) for k in start)
    assert moved > 1e-2  # training really changed the weights

"""`naive-baseline` is the reference train_gpt.py: its defaults, its forward, its export rule, its
warm-down (the warm-down itself is checked step by step in test_trainer_schedule.py).

The reference script is third-party code and is never in this repository. What it does is written
down here as data and as a short independent rendering of its rules (read from the script of
openai/parameter-golf: its Hyperparameters defaults, GPT.forward, quantize_float_tensor and the
small-tensor passthrough of quantize_state_dict_int8), and our code is compared with that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from p2pgolf.protocol import knobs
from p2pgolf.trainer.artifact import export_artifact, export_options, load_artifact
from p2pgolf.trainer.model_torch import build_model

# The reference's Hyperparameters defaults that shape the run, by the script's env names.
REFERENCE_HYPERPARAMETERS = {
    "VOCAB_SIZE": 1024, "NUM_LAYERS": 9, "MODEL_DIM": 512, "NUM_HEADS": 8, "NUM_KV_HEADS": 4,
    "MLP_MULT": 2, "TIE_EMBEDDINGS": True, "ROPE_BASE": 10000.0, "LOGIT_SOFTCAP": 30.0,
    "QK_GAIN_INIT": 1.5, "TIED_EMBED_INIT_STD": 0.005, "TRAIN_SEQ_LEN": 1024,
    "TRAIN_BATCH_TOKENS": 524288, "WARMDOWN_ITERS": 1200, "EMBED_LR": 0.6, "HEAD_LR": 0.008,
    "TIED_EMBED_LR": 0.05, "MATRIX_LR": 0.04, "SCALAR_LR": 0.04, "MUON_MOMENTUM": 0.95,
    "MUON_BACKEND_STEPS": 5, "MUON_MOMENTUM_WARMUP_START": 0.85, "MUON_MOMENTUM_WARMUP_STEPS": 500,
    "BETA1": 0.9, "BETA2": 0.95, "ADAM_EPS": 1e-8, "GRAD_CLIP_NORM": 0.0,
}  # fmt: skip
# Our knob for each of them (the same name in lower case unless listed).
KNOB_FOR = {"WARMDOWN_ITERS": "warmdown_steps"}
# What the reference fixes in code rather than in a hyperparameter, as our knobs say it.
REFERENCE_FIXED = {
    "activation": "relu2",  # MLP: relu(x)^2
    "mlp_hidden": 0,  # hidden = MLP_MULT * MODEL_DIM
    "unique_blocks": 0,  # one block per layer
    "warmup_steps": 0,  # its WARMUP_STEPS=20 primes compilation and then restores the weights
    "warmdown_frac": 0.0,  # its only warm-down is WARMDOWN_ITERS
    "min_lr_frac": 0.0,  # lr_mul falls to 0
    "ema_decay": 0.0, "muon_weight_decay": 0.0,
    "eval_seq_len": 0, "eval_stride": 0,  # validation in non-overlapping TRAIN_SEQ_LEN windows
    "quant_bits": 8, "compressor": "zlib",  # int8 codes, zlib level 9
    "embed_precision": "same", "mlp_precision": "same",  # every large matrix the same way
    "fp16_max_numel": 65536,  # INT8_KEEP_FLOAT_MAX_NUMEL
    "row_scale_rule": "reference",  # clamp_min(1/127), codes from the fp32 scale
    "row_clip": "quantile",  # INT8_CLIP_PERCENTILE 99.99984
    "muon_row_normalize": False, "muon_ns_coeffs": "quintic",  # (3.4445, -4.775, 2.0315)
    "adam_weight_decay": 0.0, "embed_weight_decay": 0.0,  # torch.optim.Adam
    "swa_every": 0, "num_loops": 0, "qat": "off", "ttt_steps": 0, "wd_taper_from_frac": 1.0, "gptq": False,
    # its attention and residual stream: full RoPE, no XSA, gates, smear, bigram or LN scale
    "xsa_last_n": 0, "rope_dims": 0, "ln_scale": False, "smear_gate": False, "skip_gates": False, "bigram_buckets": 0, "ve_last_n": 0, "parallel_from": 0,
}  # fmt: skip
# Knobs with no counterpart in the reference because they only say how bytes are laid out
# (our artifact is not a torch.save pickle) or how a step is split into micro-batches (the
# reference uses 8 // world_size; the mean gradient is the same).
NO_COUNTERPART = {"code_container", "byte_shuffle", "grad_accum_steps", "leaky_slope", "recurrence",
                  # settings of features the reference does not have (each is off above)
                  "swa_start_lr_scale", "loop_start", "loop_end", "loop_from_frac", "row_clip_sigmas", "qat_from_lr_scale", "bigram_dim", "ve_dim", "ttt_lr", "ttt_chunk_tokens", "wd_taper_final_mult", "gptq_calib_tokens"}  # fmt: skip
CONTROL_PATTERNS = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes", "q_gain", "skip_weight", "skip_weights")


def test_the_resolved_naive_baseline_is_the_references_defaults():
    config = knobs.resolve("naive-baseline", {})
    want = {KNOB_FOR.get(name, name.lower()): value for name, value in REFERENCE_HYPERPARAMETERS.items()}
    want.update(REFERENCE_FIXED)
    got = {name: config[name] for name in want}
    assert got == want
    # Every knob is accounted for: compared above, or named as having no counterpart.
    assert set(config) == set(want) | NO_COUNTERPART


def _reference_loss(w: dict[str, torch.Tensor], ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The reference GPT's forward in fp32 at the weights `w` (its state-dict names)."""
    h = REFERENCE_HYPERPARAMETERS
    dim, heads, kv_heads, layers = h["MODEL_DIM"], h["NUM_HEADS"], h["NUM_KV_HEADS"], h["NUM_LAYERS"]
    head_dim = dim // heads
    bsz, seq = ids.shape
    inv_freq = 1.0 / (h["ROPE_BASE"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]

    def rope(x):
        a, b = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        return torch.cat((a * cos + b * sin, -a * sin + b * cos), dim=-1)

    def norm(x):
        return F.rms_norm(x, (x.size(-1),))

    def block(i, x, x0):
        p = f"blocks.{i}."
        mix = w[p + "resid_mix"]
        x = mix[0] * x + mix[1] * x0
        y = norm(x)
        q = F.linear(y, w[p + "attn.c_q.weight"]).reshape(bsz, seq, heads, head_dim).transpose(1, 2)
        k = F.linear(y, w[p + "attn.c_k.weight"]).reshape(bsz, seq, kv_heads, head_dim).transpose(1, 2)
        v = F.linear(y, w[p + "attn.c_v.weight"]).reshape(bsz, seq, kv_heads, head_dim).transpose(1, 2)
        q, k = rope(norm(q)), rope(norm(k))
        q = q * w[p + "attn.q_gain"][None, :, None, None]
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + w[p + "attn_scale"] * F.linear(att.transpose(1, 2).reshape(bsz, seq, dim), w[p + "attn.proj.weight"])
        hidden = torch.relu(F.linear(norm(x), w[p + "mlp.fc.weight"])).square()
        return x + w[p + "mlp_scale"] * F.linear(hidden, w[p + "mlp.proj.weight"])

    x = norm(w["tok_emb.weight"][ids])
    x0, skips = x, []
    encoders = layers // 2
    for i in range(encoders):
        x = block(i, x, x0)
        skips.append(x)
    for i in range(layers - encoders):
        if skips:
            x = x + w["skip_weights"][i] * skips.pop()
        x = block(encoders + i, x, x0)
    logits = F.linear(norm(x).reshape(-1, dim), w["tok_emb.weight"])
    cap = h["LOGIT_SOFTCAP"]
    return F.cross_entropy(cap * torch.tanh(logits / cap), targets.reshape(-1))


@pytest.fixture(scope="module")
def randomised_model():
    """naive-baseline with every weight random (the zero-initialised projections and the unit
    gains would hide a missing term), in fp32."""
    torch.manual_seed(0)
    model = build_model(knobs.resolve("naive-baseline", {})).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim < 2 or "skip" in name or "resid" in name else 0.05))
    return model


def test_the_forward_is_the_references_at_the_same_weights(randomised_model):
    state = randomised_model.state_dict()
    assert len(state) == 92  # the reference's tensor count at 9 layers
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 1024, (2, 64), generator=g)
    targets = torch.randint(0, 1024, (2, 64), generator=g)
    with torch.no_grad():
        ours = randomised_model(ids, targets)
        theirs = _reference_loss(state, ids, targets)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
    assert float(theirs) > 0.5  # a real loss, not a degenerate zero


def _reference_round_trip(name: str, t: torch.Tensor) -> torch.Tensor:
    """What the reference's int8 export and load give back for one float tensor."""
    if t.numel() <= 65536:
        if any(p in name for p in CONTROL_PATTERNS):
            return t.float()
        return t.to(torch.float16).float()
    clip = torch.quantile(t.abs(), 0.9999984, dim=1)
    clipped = torch.maximum(torch.minimum(t, clip[:, None]), -clip[:, None])
    scale = (clip / 127.0).clamp_min(1.0 / 127.0)
    q = torch.clamp(torch.round(clipped / scale[:, None]), -127, 127).to(torch.int8)
    return q.float() * scale.to(torch.float16).float()[:, None]


def test_the_export_round_trip_is_the_references(randomised_model):
    state = {k: v.detach().numpy() for k, v in randomised_model.state_dict().items()}
    # a few rows small enough for the 1/127 floor to bite, as in a trained model's quiet rows
    state["blocks.0.mlp.fc.weight"][:4] *= 0.01
    config = knobs.resolve("naive-baseline", {})
    loaded = load_artifact(export_artifact(state, config, **export_options(config))).state
    mismatched = {}
    for name, array in state.items():
        want = _reference_round_trip(name, torch.from_numpy(array)).numpy()
        if not np.array_equal(loaded[name], want):
            mismatched[name] = float(np.abs(loaded[name] - want).max())
    assert not mismatched, mismatched
    # the floor is what made those rows coarse (codes within a few steps of 1/127, not 127 levels)
    row = loaded["blocks.0.mlp.fc.weight"][0]
    assert len(np.unique(row)) < 60

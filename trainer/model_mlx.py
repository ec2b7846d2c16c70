"""The Parameter Golf GPT in MLX: the same architecture, knobs and parameter names as torch.

What it guarantees:
- The computation of `trainer.model_torch.GPT` (read its docstring for the architecture) with
  the same parameter names and shapes, so `state_dict_numpy` / `load_state_dict_numpy` move
  weights between the backends and artifacts written by either load in the other. Given the
  same weights, fp32 logits agree with torch within 1e-4 (about 1e-6 in practice;
  tests/test_mlx_parity.py).
- Every model knob is honoured: activation (relu2, leaky_relu2 with leaky_slope, swiglu),
  depth recurrence (unique_blocks, cycle|mirror, via `trainer.model_spec.block_schedule`), tied or
  untied embeddings, logit soft cap (0 disables), RoPE base, QK gain, embedding init std, the
  looped segment, XSA, partial RoPE, ln_scale, SmearGate, BigramHash and gated skips.
- `compute_dtype` (float32 or bfloat16) is the dtype of the residual stream and the matmuls,
  as torch's autocast does on CUDA; parameters stay float32 and logits are float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from p2pgolf.trainer.model_spec import BIGRAM_MULTIPLIERS, BIGRAM_SCALE_INIT, PARALLEL_RESID_INIT, VALUE_EMBED_INIT_STD, VALUE_EMBED_SCALE_INIT, ModelSpec, block_schedule

__all__ = ["GPT", "ModelSpec", "build_model", "block_schedule", "state_dict_numpy", "load_state_dict_numpy"]


# While collect_grams runs: {matrix name: float64 Gram matrix of its inputs}; otherwise None.
_GRAMS: dict[str, np.ndarray] | None = None


def collect_grams(model: "GPT", batches) -> dict[str, np.ndarray]:
    """model_torch.collect_grams in MLX: the input Gram matrices of every block, BigramHash and
    value-embedding matrix, by name, over the forward passes of `batches` (int token arrays)."""
    global _GRAMS
    for name, module in model.named_modules():
        if isinstance(module, (Attention, MLP, BigramHash, ValueEmbedding)):
            module.gram_path = name
    _GRAMS = {}
    try:
        for batch in batches:
            mx.eval(model.logits(mx.array(np.asarray(batch, dtype=np.int32))))
        return _GRAMS
    finally:
        _GRAMS = None


def _record(module, x: mx.array, *names: str) -> None:
    if _GRAMS is None:
        return
    flat = x.astype(mx.float32).reshape(-1, x.shape[-1])
    gram = np.array(flat.T @ flat, dtype=np.float64)
    for name in names:
        key = f"{module.gram_path}.{name}.weight"
        _GRAMS[key] = gram if key not in _GRAMS else _GRAMS[key] + gram


def build_model(config: Mapping[str, Any], *, seed: int = 0, compute_dtype: mx.Dtype = mx.float32) -> "GPT":
    """A freshly initialised GPT for a resolved knob config; `seed` fixes the initial weights."""
    mx.random.seed(seed)
    model = GPT(ModelSpec.from_config(config), compute_dtype=compute_dtype)
    mx.eval(model.parameters())
    return model


def state_dict_numpy(model: "GPT") -> dict[str, np.ndarray]:
    """Every parameter as a float32 numpy array under its shared (torch) name."""
    return {name: np.array(value.astype(mx.float32)) for name, value in tree_flatten(model.parameters())}


def load_state_dict_numpy(model: "GPT", state: Mapping[str, np.ndarray]) -> None:
    """Replace the model's weights; names and shapes must match exactly (else ValueError naming them)."""
    own = dict(tree_flatten(model.parameters()))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"state dict does not fit the model: missing {missing}, unexpected {unexpected}")
    for name, value in own.items():
        if tuple(np.shape(state[name])) != tuple(value.shape):
            raise ValueError(f"parameter {name} has shape {tuple(np.shape(state[name]))}, the model wants {tuple(value.shape)}")
    model.update(tree_unflatten([(name, mx.array(np.asarray(state[name], dtype=np.float32))) for name in own]))
    mx.eval(model.parameters())


class GPT(nn.Module):
    """Token ids in, cross-entropy out: `per_token_loss` (nats per target) or `loss` (the mean)."""

    def __init__(self, spec: ModelSpec, *, compute_dtype: mx.Dtype = mx.float32) -> None:
        super().__init__()
        self.spec = spec
        self.compute_dtype = compute_dtype
        schedule = spec.schedule
        # Which order runs: the looped one from the start (and always at evaluation); training
        # turns it off until loop_from_frac of its budget when that is set.
        self.looping = bool(spec.num_loops)
        num_skips = spec.num_skips
        dim = spec.model_dim
        std = spec.tied_embed_init_std if spec.tie_embeddings else 1.0  # torch's Embedding default is N(0, 1)
        self.tok_emb = nn.Embedding(spec.vocab_size, dim)
        self.tok_emb.weight = mx.random.normal((spec.vocab_size, dim)) * std
        self.skip_weights = mx.ones((num_skips, dim))
        if spec.skip_gates:
            self.skip_gates = mx.zeros((num_skips, dim))
        if spec.smear_gate:
            self.smear_gate = mx.zeros((dim,))
        if spec.bigram_buckets:
            self.bigram = BigramHash(spec.bigram_buckets, spec.bigram_dim, dim)
        if spec.ve_last_n:
            self.value_embed = ValueEmbedding(spec.vocab_size, spec.ve_dim, spec.kv_dim)
        if spec.parallel_from:
            blocks = max(schedule) + 1
            self.parallel_post = mx.ones((blocks, 2, 2))
            self.parallel_resid = mx.full((blocks, 2), PARALLEL_RESID_INIT)
        xsa, ve = spec.xsa_blocks, spec.ve_blocks
        self.blocks = [Block(spec, b in xsa, spec.ln_factor(b), b in ve) for b in range(max(schedule) + 1)]
        if not spec.tie_embeddings:
            self.lm_head = nn.Linear(dim, spec.vocab_size, bias=False)
            self.lm_head.weight = mx.zeros_like(self.lm_head.weight)

    def hidden(self, input_ids: mx.array) -> mx.array:
        """Final normalised hidden states [batch, seq, dim] in the compute dtype."""
        x = self.tok_emb(input_ids)
        if self.spec.bigram_buckets:
            x = x + self.bigram(input_ids)
        x = _rms(x).astype(self.compute_dtype)
        if self.spec.smear_gate:
            # SmearGate: each position takes a learned share of the previous one's embedding.
            g = mx.sigmoid(self.smear_gate.astype(x.dtype))
            previous = mx.concatenate([mx.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
            x = (1 - g) * x + g * previous
        x0 = x
        values = self.value_embed(input_ids) if self.spec.ve_last_n else None
        skips: list[mx.array] = []
        order = self.spec.layer_order(self.looping)
        encoders = len(order) // 2
        start = self.spec.parallel_from
        lane1 = None  # the MLP's lane, once parallel lanes begin; x is lane 0
        for layer, b in enumerate(order):
            if layer < encoders:
                x = self.blocks[b](x, x0, values)
                skips.append(x)
                continue
            parallel = start and layer >= start
            if parallel and lane1 is None:
                lane1 = x
            if skips:
                i = layer - encoders
                skip = self.skip_weights[i].astype(x.dtype) * skips.pop()
                if self.spec.skip_gates:  # a sigmoid gate between the skip and the stream
                    x = skip + mx.sigmoid(self.skip_gates[i].astype(x.dtype)) * (x - skip)
                else:
                    x = x + skip
            if parallel:
                x, lane1 = self.blocks[b].parallel(x, lane1, x0, values, self.parallel_resid[b].astype(x.dtype), self.parallel_post[b].astype(x.dtype))
            else:
                x = self.blocks[b](x, x0, values)
        if lane1 is not None:
            x = 0.5 * (x + lane1)
        return _rms(x)

    def logits(self, input_ids: mx.array) -> mx.array:
        """Soft-capped logits [batch, seq, vocab] in float32."""
        h = self.hidden(input_ids)
        weight = self.tok_emb.weight if self.spec.tie_embeddings else self.lm_head.weight
        logits = (h @ weight.astype(h.dtype).T).astype(mx.float32)
        cap = self.spec.logit_softcap
        if cap > 0:
            logits = cap * mx.tanh(logits / cap)
        return logits

    def per_token_loss(self, input_ids: mx.array, target_ids: mx.array) -> mx.array:
        """Cross-entropy in nats for every target, shape of target_ids (float32)."""
        logits = self.logits(input_ids)
        picked = mx.take_along_axis(logits, target_ids[..., None], axis=-1)[..., 0]
        return mx.logsumexp(logits, axis=-1) - picked

    def loss(self, input_ids: mx.array, target_ids: mx.array) -> mx.array:
        """Mean cross-entropy over all targets (a scalar)."""
        return self.per_token_loss(input_ids, target_ids).mean()

    def __call__(self, input_ids: mx.array, target_ids: mx.array) -> mx.array:
        return self.loss(input_ids, target_ids)


class BigramHash(nn.Module):
    """model_torch.BigramHash: hashed (previous, current) token embeddings; the table starts at
    zero, the projection at the default init."""

    def __init__(self, buckets: int, bigram_dim: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, bigram_dim)
        self.embed.weight = mx.zeros((buckets, bigram_dim))
        if bigram_dim != dim:
            self.proj = nn.Linear(bigram_dim, dim, bias=False)
        self.scale = mx.full((1,), BIGRAM_SCALE_INIT)
        self.projected = bigram_dim != dim

    def __call__(self, input_ids: mx.array) -> mx.array:
        ids = input_ids.astype(mx.int64)
        a, b = BIGRAM_MULTIPLIERS
        rest = mx.remainder(mx.bitwise_xor(a * ids[:, 1:], b * ids[:, :-1]), self.buckets - 1)
        bucket = mx.concatenate([mx.full(ids[:, :1].shape, self.buckets - 1, dtype=mx.int64), rest], axis=1)
        h = self.embed(bucket)
        if self.projected:
            _record(self, h, "proj")
            h = h @ self.proj.weight.T
        return h * self.scale


class ValueEmbedding(nn.Module):
    """model_torch.ValueEmbedding: a token table added to some blocks' attention values."""

    def __init__(self, vocab_size: int, ve_dim: int, kv_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, ve_dim)
        self.embed.weight = mx.random.normal((vocab_size, ve_dim)) * VALUE_EMBED_INIT_STD
        self.projected = ve_dim != kv_dim
        if self.projected:
            self.proj = nn.Linear(ve_dim, kv_dim, bias=False)
            self.proj.weight = mx.zeros((kv_dim, ve_dim))
        self.scale = mx.full((1,), VALUE_EMBED_SCALE_INIT)

    def __call__(self, input_ids: mx.array) -> mx.array:
        h = self.embed(input_ids)
        if self.projected:
            _record(self, h, "proj")
            h = h @ self.proj.weight.T
        return h * self.scale


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, xsa: bool = False, ln_factor: float = 1.0, value_embed: bool = False) -> None:
        super().__init__()
        dim = spec.model_dim
        self.ln_factor = ln_factor  # 1/sqrt(b+1) on the block's normalised inputs with ln_scale
        self.attn = Attention(spec, xsa, value_embed)
        self.mlp = MLP(spec)
        self.attn_scale = mx.ones((dim,))
        self.mlp_scale = mx.ones((dim,))
        self.resid_mix = mx.stack([mx.ones((dim,)), mx.zeros((dim,))])

    def __call__(self, x: mx.array, x0: mx.array, values: mx.array | None = None) -> mx.array:
        mix = self.resid_mix.astype(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.astype(x.dtype) * self.attn(self._norm(x), values)
        return x + self.mlp_scale.astype(x.dtype) * self.mlp(self._norm(x))

    def parallel(self, lane0, lane1, x0, values, resid, post):
        """model_torch.Block.parallel: attention on lane 0, the MLP on lane 1, side by side."""
        mix = self.resid_mix.astype(lane0.dtype)
        attn = self.attn_scale.astype(lane0.dtype) * self.attn(self._norm(mix[0] * lane0 + mix[1] * x0), values)
        mlp = self.mlp_scale.astype(lane1.dtype) * self.mlp(self._norm(lane1))
        return resid[0] * lane0 + post[0, 0] * attn + post[1, 0] * mlp, resid[1] * lane1 + post[0, 1] * attn + post[1, 1] * mlp

    def _norm(self, x: mx.array) -> mx.array:
        y = _rms(x)
        return y if self.ln_factor == 1.0 else y * self.ln_factor


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, xsa: bool = False, value_embed: bool = False) -> None:
        super().__init__()
        dim, heads, kv = spec.model_dim, spec.num_heads, spec.num_kv_heads
        if dim % heads or heads % kv or (dim // heads) % 2:
            raise ValueError(f"bad attention shape: dim={dim} heads={heads} kv_heads={kv}")
        self.num_heads = heads
        self.num_kv_heads = kv
        self.head_dim = dim // heads
        self.rope_dims = spec.rope_dims or self.head_dim  # partial RoPE rotates only the first ones
        self.xsa = xsa
        self.rope_base = float(spec.rope_base)
        self.c_q = _linear(dim, dim)
        self.c_k = _linear(dim, kv * self.head_dim)
        self.c_v = _linear(dim, kv * self.head_dim)
        self.proj = _linear(dim, dim)
        self.proj.weight = mx.zeros_like(self.proj.weight)  # every block starts as the identity
        self.q_gain = mx.full((heads,), float(spec.qk_gain_init))
        self.value_embedded = value_embed
        if value_embed:
            self.ve_scale = mx.ones((1,))  # this block's gain on the value embedding

    def __call__(self, x: mx.array, values: mx.array | None = None) -> mx.array:
        bsz, seq_len, dim = x.shape
        dtype = x.dtype
        _record(self, x, "c_q", "c_k", "c_v")
        q = (x @ self.c_q.weight.astype(dtype).T).reshape(bsz, seq_len, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = (x @ self.c_k.weight.astype(dtype).T).reshape(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = x @ self.c_v.weight.astype(dtype).T
        if self.value_embedded and values is not None:
            v = v + self.ve_scale.astype(dtype) * values.astype(dtype)
        v = v.reshape(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        cos, sin = _rope_tables(seq_len, self.rope_dims, self.rope_base)
        q = _rotate(_rms(q), cos.astype(dtype), sin.astype(dtype))
        k = _rotate(_rms(k), cos.astype(dtype), sin.astype(dtype))
        q = q * self.q_gain.astype(dtype)[None, :, None, None]
        # Grouped-query attention: query head h reads key/value head h // (heads // kv_heads).
        y = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask="causal")
        if self.xsa:
            # Exclusive self-attention: drop each output's component along its own value vector.
            group = self.num_heads // self.num_kv_heads
            y = y.reshape(bsz, self.num_kv_heads, group, seq_len, self.head_dim)
            norm = mx.sqrt(mx.sum(mx.square(v), axis=-1, keepdims=True))
            vn = (v / mx.maximum(norm, 1e-12))[:, :, None]
            y = (y - mx.sum(y * vn, axis=-1, keepdims=True) * vn).reshape(bsz, self.num_heads, seq_len, self.head_dim)
        y = y.transpose(0, 2, 1, 3).reshape(bsz, seq_len, dim)
        _record(self, y, "proj")
        return y @ self.proj.weight.astype(dtype).T


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.activation not in ("relu2", "leaky_relu2", "swiglu"):
            raise ValueError(f"unknown activation {spec.activation!r}")
        self.activation = spec.activation
        self.leaky_slope = float(spec.leaky_slope)
        self.fc = _linear(spec.model_dim, spec.mlp_hidden)
        if spec.activation == "swiglu":
            self.gate = _linear(spec.model_dim, spec.mlp_hidden)
        self.proj = _linear(spec.mlp_hidden, spec.model_dim)
        self.proj.weight = mx.zeros_like(self.proj.weight)

    def __call__(self, x: mx.array) -> mx.array:
        dtype = x.dtype
        _record(self, x, "fc", *(("gate",) if self.activation == "swiglu" else ()))
        h = x @ self.fc.weight.astype(dtype).T
        if self.activation == "relu2":
            h = mx.square(mx.maximum(h, 0))
        elif self.activation == "leaky_relu2":
            h = mx.square(mx.where(h >= 0, h, h * self.leaky_slope))
        else:
            g = x @ self.gate.weight.astype(dtype).T
            h = g * mx.sigmoid(g) * h
        _record(self, h, "proj")
        return h @ self.proj.weight.astype(dtype).T


def _linear(in_features: int, out_features: int) -> nn.Linear:
    # MLX's default init is torch's: uniform in +-1/sqrt(in_features).
    return nn.Linear(in_features, out_features, bias=False)


def _rms(x: mx.array) -> mx.array:
    # torch's F.rms_norm with eps=None uses the dtype's machine epsilon; so do we.
    return mx.fast.rms_norm(x, None, float(mx.finfo(x.dtype).eps))


@functools.lru_cache(maxsize=16)
def _rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[mx.array, mx.array]:
    # float32 tables computed in numpy, like torch's: positions x inverse frequencies.
    inv_freq = 1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    freqs = np.outer(np.arange(seq_len, dtype=np.float32), inv_freq.astype(np.float32))
    return mx.array(np.cos(freqs)[None, None]), mx.array(np.sin(freqs)[None, None])


def _rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    # RoPE on the two halves of the first 2*len(cos) dims of each head, as the torch model and
    # the baseline do; with partial RoPE the other dims pass through.
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = mx.concatenate([x1 * cos + x2 * sin, x2 * cos - x1 * sin], axis=-1)
    return rotated if x.shape[-1] == 2 * half else mx.concatenate([rotated, x[..., 2 * half :]], axis=-1)

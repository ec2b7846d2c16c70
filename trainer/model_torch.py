"""The GPT of the Parameter Golf baseline, in torch, with the knob variants p2pgolf searches.

What it guarantees:
- The architecture of the challenge baseline: RMSNorm, grouped-query attention with RoPE and
  QK norm and a per-head query gain, U-Net style skips between the first and second half of the
  layers, each block mixing its input with the (normalised) embedding, a tanh logit soft cap,
  tied embeddings, zero-initialised output projections.
- Variants from the knob vocabulary: MLP activation (relu2, leaky_relu2, swiglu), depth
  recurrence (`unique_blocks` blocks reused over `num_layers` layers, cycled or mirrored).
- Stable parameter names, shared with every backend (an MLX model uses the same keys and
  shapes, so artifacts load in either). Matrices are [out_features, in_features]:

      tok_emb.weight                    [vocab, dim]
      lm_head.weight                    [vocab, dim]        (only when embeddings are untied)
      skip_weights                      [min(L//2, L-L//2), dim]
      blocks.{b}.resid_mix              [2, dim]            (row 0 scales x, row 1 scales x0)
      blocks.{b}.attn_scale             [dim]
      blocks.{b}.mlp_scale              [dim]
      blocks.{b}.attn.c_q.weight        [dim, dim]
      blocks.{b}.attn.c_k.weight        [kv_heads*head_dim, dim]
      blocks.{b}.attn.c_v.weight        [kv_heads*head_dim, dim]
      blocks.{b}.attn.proj.weight       [dim, dim]
      blocks.{b}.attn.q_gain            [heads]
      blocks.{b}.mlp.fc.weight          [hidden, dim]
      blocks.{b}.mlp.gate.weight        [hidden, dim]       (only for swiglu)
      blocks.{b}.mlp.proj.weight        [dim, hidden]
      skip_gates                        [skips, dim]        (only with skip_gates)
      smear_gate                        [dim]               (only with smear_gate)
      bigram.embed.weight               [buckets, bigram_dim] (only with bigram_buckets)
      bigram.proj.weight                [dim, bigram_dim]   (only when bigram_dim != dim)
      bigram.scale                      [1]
      value_embed.embed.weight          [vocab, ve_dim]     (only with ve_last_n)
      value_embed.proj.weight           [kv_dim, ve_dim]    (only when ve_dim != kv_dim)
      value_embed.scale                 [1]
      blocks.{b}.attn.ve_scale          [1]                 (blocks of the last ve_last_n layers)
      parallel_post                     [blocks, 2, 2]      (only with parallel_from)
      parallel_resid                    [blocks, 2]

  `b` counts unique blocks; `block_schedule` says which block each layer runs.
- The records' structure knobs: XSA on the blocks of the last `xsa_last_n` layers, partial
  RoPE (`rope_dims`), 1/sqrt(b+1) on block b's normalised inputs (`ln_scale`), SmearGate,
  BigramHash embeddings, value embeddings, sigmoid-gated skips, parallel residual lanes; a looped middle segment
  (`num_loops`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from p2pgolf.trainer.model_spec import BIGRAM_MULTIPLIERS, BIGRAM_SCALE_INIT, CONTROL_PARAMETER_SUFFIXES, PARALLEL_RESID_INIT, VALUE_EMBED_INIT_STD, VALUE_EMBED_SCALE_INIT, ModelSpec, block_schedule  # shared with MLX

__all__ = ["GPT", "block_schedule", "build_model", "CONTROL_PARAMETER_SUFFIXES"]


def build_model(config: Mapping[str, Any]) -> "GPT":
    """A freshly initialised GPT for a resolved knob config (protocol.knobs.resolve)."""
    return GPT(ModelSpec.from_config(config))


class GPT(nn.Module):
    """Token ids in, cross-entropy out (mean, or per token with `per_token_loss`)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        dim = spec.model_dim
        self.tie_embeddings = spec.tie_embeddings
        self.logit_softcap = float(spec.logit_softcap)
        # dtype of the residual stream; None keeps the parameters' (float32). Set it only while
        # running under autocast to that dtype (training and evaluation on CUDA do).
        self.stream_dtype: torch.dtype | None = None
        self.schedule = list(spec.schedule)
        self.orders = {False: spec.layer_order(False), True: spec.layer_order(True)}
        # Which order runs: the looped one from the start (and always at evaluation); training
        # turns it off until loop_from_frac of its budget when that is set.
        self.looping = bool(spec.num_loops)

        self.tok_emb = nn.Embedding(spec.vocab_size, dim)
        self.bigram = BigramHash(spec.bigram_buckets, spec.bigram_dim, dim) if spec.bigram_buckets else None
        self.value_embed = ValueEmbedding(spec.vocab_size, spec.ve_dim, spec.kv_dim) if spec.ve_last_n else None
        self.smear_gate = nn.Parameter(torch.zeros(dim)) if spec.smear_gate else None
        self.skip_weights = nn.Parameter(torch.ones(spec.num_skips, dim))
        self.skip_gates = nn.Parameter(torch.zeros(spec.num_skips, dim)) if spec.skip_gates else None
        blocks = max(self.schedule) + 1
        self.parallel_from = spec.parallel_from
        # per block: [attention, MLP] x [to lane 0, to lane 1], and each lane's own carry
        self.parallel_post = nn.Parameter(torch.ones(blocks, 2, 2)) if spec.parallel_from else None
        self.parallel_resid = nn.Parameter(torch.full((blocks, 2), PARALLEL_RESID_INIT)) if spec.parallel_from else None
        xsa = spec.xsa_blocks
        ve = spec.ve_blocks
        self.blocks = nn.ModuleList(Block(spec, b in xsa, spec.ln_factor(b), b in ve) for b in range(max(self.schedule) + 1))
        self.lm_head = None if spec.tie_embeddings else nn.Linear(dim, spec.vocab_size, bias=False)
        self._init_weights(spec.tied_embed_init_std)

    def _init_weights(self, tied_embed_init_std: float) -> None:
        if self.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=tied_embed_init_std)
        else:
            nn.init.zeros_(self.lm_head.weight)
        for block in self.blocks:
            # Output projections start at zero: every block begins as the identity.
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)

    def hidden(self, input_ids: Tensor) -> Tensor:
        """Final normalised hidden states [batch, seq, dim]."""
        x = self.tok_emb(input_ids)
        if self.bigram is not None:
            x = x + self.bigram(input_ids)
        x = F.rms_norm(x, (self.tok_emb.embedding_dim,))
        if self.stream_dtype is not None:
            # Under bf16 autocast the residual stream runs in bf16 too, as the baseline's does.
            x = x.to(self.stream_dtype)
        if self.smear_gate is not None:
            # SmearGate: each position takes a learned share of the previous one's embedding.
            g = torch.sigmoid(self.smear_gate.to(x.dtype))
            x = (1 - g) * x + g * F.pad(x[:, :-1], (0, 0, 1, 0))
        x0 = x
        values = None if self.value_embed is None else self.value_embed(input_ids)
        skips: list[Tensor] = []
        order = self.orders[self.looping]
        encoders = len(order) // 2
        lane1: Tensor | None = None  # the MLP's lane, once parallel lanes begin; x is lane 0
        for layer, b in enumerate(order):
            if layer < encoders:
                x = self.blocks[b](x, x0, values)
                skips.append(x)
                continue
            parallel = self.parallel_from and layer >= self.parallel_from
            if parallel and lane1 is None:
                lane1 = x
            if skips:
                i = layer - encoders
                skip = self.skip_weights[i].to(x.dtype) * skips.pop()
                if self.skip_gates is None:
                    x = x + skip
                else:  # a sigmoid gate between the skip and the stream (0.5 each at init)
                    x = skip + torch.sigmoid(self.skip_gates[i].to(x.dtype)) * (x - skip)
            if parallel:
                x, lane1 = self.blocks[b].parallel(x, lane1, x0, values, self.parallel_resid[b].to(x.dtype), self.parallel_post[b].to(x.dtype))
            else:
                x = self.blocks[b](x, x0, values)
        if lane1 is not None:
            x = 0.5 * (x + lane1)
        return F.rms_norm(x, (x.size(-1),))

    def logits(self, input_ids: Tensor) -> Tensor:
        """Soft-capped logits [batch, seq, vocab] in float32."""
        h = self.hidden(input_ids)
        weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(h, weight.to(h.dtype)).float()
        if self.logit_softcap > 0:
            logits = self.logit_softcap * torch.tanh(logits / self.logit_softcap)
        return logits

    def per_token_loss(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Cross-entropy in nats for every target, shape of target_ids."""
        logits = self.logits(input_ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction="none")
        return loss.view_as(target_ids)

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        logits = self.logits(input_ids)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1))


class BigramHash(nn.Module):
    """BigramHash embedding: each position adds a learned vector for (previous, current) token,
    hashed into `buckets` rows (model_spec.BIGRAM_MULTIPLIERS), scaled by a learned gain. The
    table starts at zero and the projection at a random init (were both zero, neither would
    ever get a gradient)."""

    def __init__(self, buckets: int, bigram_dim: int, dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.embed = nn.Embedding(buckets, bigram_dim)
        nn.init.zeros_(self.embed.weight)
        self.proj = QuantisableLinear(bigram_dim, dim) if bigram_dim != dim else None
        self.scale = nn.Parameter(torch.full((1,), BIGRAM_SCALE_INIT))

    def forward(self, input_ids: Tensor) -> Tensor:
        ids = input_ids.long()
        bucket = torch.full_like(ids, self.buckets - 1)
        bucket[:, 1:] = torch.bitwise_xor(BIGRAM_MULTIPLIERS[0] * ids[:, 1:], BIGRAM_MULTIPLIERS[1] * ids[:, :-1]) % (self.buckets - 1)
        h = self.embed(bucket)
        if self.proj is not None:
            h = self.proj(h)
        return h * self.scale.to(h.dtype)


class ValueEmbedding(nn.Module):
    """A token table added to the attention values of some blocks (each with its own gain):
    token identity re-enters late layers. Small random table, zero projection, gain 0.1."""

    def __init__(self, vocab_size: int, ve_dim: int, kv_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, ve_dim)
        nn.init.normal_(self.embed.weight, std=VALUE_EMBED_INIT_STD)
        self.proj = QuantisableLinear(ve_dim, kv_dim) if ve_dim != kv_dim else None
        if self.proj is not None:
            nn.init.zeros_(self.proj.weight)
        self.scale = nn.Parameter(torch.full((1,), VALUE_EMBED_SCALE_INIT))

    def forward(self, input_ids: Tensor) -> Tensor:
        h = self.embed(input_ids)
        if self.proj is not None:
            h = self.proj(h)
        return h * self.scale.to(h.dtype)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, xsa: bool, ln_factor: float, value_embed: bool = False) -> None:
        super().__init__()
        dim = spec.model_dim
        self.attn = Attention(dim, spec.num_heads, spec.num_kv_heads, spec.rope_base, spec.qk_gain_init, spec.rope_dims, xsa, value_embed)
        self.mlp = MLP(dim, spec.mlp_hidden, spec.activation, spec.leaky_slope)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))
        self.ln_factor = ln_factor  # 1/sqrt(b+1) on the block's normalised inputs with ln_scale

    def forward(self, x: Tensor, x0: Tensor, values: Tensor | None = None) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(self._norm(x), values)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self._norm(x))

    def parallel(self, lane0: Tensor, lane1: Tensor, x0: Tensor, values: Tensor | None, resid: Tensor, post: Tensor) -> tuple[Tensor, Tensor]:
        """The block on two lanes: attention reads lane 0 (mixed with x0), the MLP reads lane 1,
        side by side; each lane keeps resid[lane] of itself and gets post[part, lane] of each part."""
        mix = self.resid_mix.to(lane0.dtype)
        attn = self.attn_scale.to(lane0.dtype) * self.attn(self._norm(mix[0] * lane0 + mix[1] * x0), values)
        mlp = self.mlp_scale.to(lane1.dtype) * self.mlp(self._norm(lane1))
        return resid[0] * lane0 + post[0, 0] * attn + post[1, 0] * mlp, resid[1] * lane1 + post[0, 1] * attn + post[1, 1] * mlp

    def _norm(self, x: Tensor) -> Tensor:
        y = F.rms_norm(x, (x.size(-1),))
        return y if self.ln_factor == 1.0 else y * self.ln_factor


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, rope_base: float, qk_gain_init: float, rope_dims: int = 0, xsa: bool = False,
                 value_embed: bool = False) -> None:  # fmt: skip
        super().__init__()
        if dim % num_heads or num_heads % num_kv_heads or (dim // num_heads) % 2:
            raise ValueError(f"bad attention shape: dim={dim} heads={num_heads} kv_heads={num_kv_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.rope_dims = rope_dims or self.head_dim  # partial RoPE rotates only the first ones
        self.xsa = xsa
        kv_dim = num_kv_heads * self.head_dim
        self.c_q = QuantisableLinear(dim, dim)
        self.c_k = QuantisableLinear(dim, kv_dim)
        self.c_v = QuantisableLinear(dim, kv_dim)
        self.proj = QuantisableLinear(dim, dim)
        self.q_gain = nn.Parameter(torch.full((num_heads,), float(qk_gain_init)))
        self.ve_scale = nn.Parameter(torch.ones(1)) if value_embed else None  # this block's gain on the value embedding
        # Not a buffer: the model holds parameters only (nothing for DDP to broadcast, nothing
        # in the state dict that another backend would have to match).
        self.rope_base = float(rope_base)
        self._rope_cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def _rope(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        cache = self._rope_cache
        if cache is not None and cache[0] == seq_len and cache[1] == device:
            return cache[2], cache[3]
        rd = self.rope_dims
        inv_freq = 1.0 / (self.rope_base ** (torch.arange(0, rd, 2, device=device, dtype=torch.float32) / rd))
        t = torch.arange(seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        cos, sin = freqs.cos()[None, None], freqs.sin()[None, None]
        if not torch.compiler.is_compiling():
            # A compiled graph computes the tables itself: storing them from inside it would
            # change the module under the graph's guards and compile the model a second time.
            self._rope_cache = (seq_len, device, cos, sin)
        return cos, sin

    def forward(self, x: Tensor, values: Tensor | None = None) -> Tensor:
        bsz, seq_len, dim = x.shape
        q = self.c_q(x).view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x)
        if self.ve_scale is not None and values is not None:
            v = v + self.ve_scale.to(v.dtype) * values.to(v.dtype)
        v = v.view(bsz, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = F.rms_norm(q, (self.head_dim,))
        k = F.rms_norm(k, (self.head_dim,))
        cos, sin = self._rope(seq_len, x.device)
        q = _rotate(q, cos.to(q.dtype), sin.to(q.dtype))
        k = _rotate(k, cos.to(k.dtype), sin.to(k.dtype))
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        # Query head h reads key/value head h // (num_heads // num_kv_heads).
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
        if self.xsa:
            # Exclusive self-attention: drop each output's component along its own value vector.
            group = self.num_heads // self.num_kv_heads
            y = y.view(bsz, self.num_kv_heads, group, seq_len, self.head_dim)
            vn = F.normalize(v, dim=-1)[:, :, None]
            y = (y - (y * vn).sum(dim=-1, keepdim=True) * vn).view(bsz, self.num_heads, seq_len, self.head_dim)
        return self.proj(y.transpose(1, 2).reshape(bsz, seq_len, dim))


class QuantisableLinear(nn.Linear):
    """A bias-free linear layer that can train through a per-row fake quantiser (trainer/qat.py):
    with `qat_bits` set, the forward pass uses the quantised weight and the gradient passes
    straight through to the float one. The parameter is still `weight`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.qat_bits = 0  # 0: off
        self.qat_floor = 0.0

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.qat_bits:
            w = w + (fake_quantise(w, self.qat_bits, self.qat_floor) - w).detach()
        return F.linear(x, w.to(x.dtype))


def fake_quantise(w: Tensor, bits: int, floor: float) -> Tensor:
    """`w` rounded to `bits`-bit codes on per-row scales max(row max / qmax, floor), in float32."""
    qmax = 2 ** (bits - 1) - 1
    w32 = w.detach().float()
    scale = (w32.abs().amax(dim=1, keepdim=True) / qmax).clamp_min(floor)
    return (torch.clamp(torch.round(w32 / scale), -qmax, qmax) * scale).to(w.dtype)


def collect_grams(model: nn.Module, batches, device: torch.device | str = "cpu") -> dict[str, "np.ndarray"]:
    """Input Gram matrices (sum of x x^T, float64) of every QuantisableLinear's weight, by name,
    over the forward passes of `batches` (int64 token arrays) - GPTQ's calibration."""
    import numpy as np

    grams: dict[str, Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, QuantisableLinear):

            def record(_module, args, key=f"{name}.weight"):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                grams[key] = x.T @ x if key not in grams else grams[key] + x.T @ x

            hooks.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad():
            for batch in batches:
                model.logits(torch.from_numpy(np.asarray(batch, dtype=np.int64)).to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return {key: g.cpu().numpy() for key, g in grams.items()}


def set_qat(model: nn.Module, bits: dict[str, int], floor_of) -> None:
    """Train the matrices named in `bits` through the fake quantiser (an empty dict: none)."""
    for name, module in model.named_modules():
        if isinstance(module, QuantisableLinear):
            module.qat_bits = bits.get(f"{name}.weight", 0)
            module.qat_floor = floor_of(module.qat_bits) if module.qat_bits else 0.0


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # RoPE on the two halves of the first 2*len(cos) dims of each head (the baseline's layout,
    # not interleaved pairs); with partial RoPE the other dims pass through unrotated.
    rd = 2 * cos.size(-1)
    rest = x[..., rd:]
    half = rd // 2
    x1, x2 = x[..., :half], x[..., half:rd]
    rotated = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
    return rotated if rest.size(-1) == 0 else torch.cat((rotated, rest), dim=-1)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str, leaky_slope: float) -> None:
        super().__init__()
        if activation not in ("relu2", "leaky_relu2", "swiglu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.activation = activation
        self.leaky_slope = float(leaky_slope)
        self.fc = QuantisableLinear(dim, hidden)
        self.gate = QuantisableLinear(dim, hidden) if activation == "swiglu" else None
        self.proj = QuantisableLinear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.activation == "relu2":
            h = torch.relu(h).square()
        elif self.activation == "leaky_relu2":
            h = F.leaky_relu(h, self.leaky_slope).square()
        else:
            h = F.silu(self.gate(x)) * h
        return self.proj(h)

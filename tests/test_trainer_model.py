"""The torch GPT: shapes, stable names, depth recurrence, and the knob variants train and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from p2pgolf.protocol import knobs
from p2pgolf.trainer.artifact import load_artifact, export_artifact, export_options
from p2pgolf.trainer.model_torch import _rotate, build_model
from p2pgolf.trainer.model_spec import ModelSpec, block_schedule
from p2pgolf.trainer.train_common import looping_at
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.trainer.train_torch import load_numpy_state, train

from trainer_helpers import build_fineweb, tiny_config


@pytest.fixture(scope="module")
def fineweb(tmp_path_factory):
    return build_fineweb(tmp_path_factory.mktemp("fineweb") / "data")


def _block_params(model) -> int:
    return sum(p.numel() for p in model.blocks.parameters())


def test_four_unique_blocks_over_eight_layers_have_half_the_block_parameters_of_eight():
    full = build_model(knobs.resolve("cpu-small", {"num_layers": 8}))
    shared = build_model(knobs.resolve("cpu-small", {"num_layers": 8, "unique_blocks": 4}))
    assert len(full.blocks) == 8 and len(shared.blocks) == 4
    assert _block_params(shared) * 2 == _block_params(full)
    # Everything outside the blocks (embedding, skip weights) is the same.
    outside = lambda m: sum(p.numel() for p in m.parameters()) - _block_params(m)  # noqa: E731
    assert outside(shared) == outside(full)


def test_cycle_and_mirror_reuse_blocks_in_the_stated_order():
    assert block_schedule(8, 4, "cycle") == [0, 1, 2, 3, 0, 1, 2, 3]
    assert block_schedule(8, 4, "mirror") == [0, 1, 2, 3, 3, 2, 1, 0]
    assert block_schedule(5, 0, "cycle") == [0, 1, 2, 3, 4]
    model = build_model(knobs.resolve("cpu-small", {"num_layers": 6, "unique_blocks": 2, "recurrence": "mirror"}))
    assert model.schedule == [0, 1, 1, 0, 0, 1]


def test_a_looped_segment_repeats_its_layers_in_place_and_the_skips_cover_the_deeper_order():
    config = knobs.resolve("cpu-small", {"num_layers": 6, "num_loops": 2, "loop_start": 2, "loop_end": 3})
    spec = ModelSpec.from_config(config)
    assert spec.layer_order(False) == (0, 1, 2, 3, 4, 5)
    assert spec.layer_order(True) == (0, 1, 2, 3, 2, 3, 2, 3, 4, 5)
    model = build_model(config)
    assert model.looping and model.skip_weights.shape[0] == spec.num_skips == 5
    assert len(model.blocks) == 6  # looping reuses blocks: no new parameters but the skips
    # with shared blocks the segment loops the blocks those layers run
    mirrored = ModelSpec.from_config(knobs.resolve("cpu-small", {"num_layers": 4, "unique_blocks": 2, "recurrence": "mirror", "num_loops": 1, "loop_start": 1, "loop_end": 2}))
    assert mirrored.layer_order(True) == (0, 1, 1, 1, 1, 0)


def test_looping_changes_the_forward_and_training_turns_it_on_at_its_fraction():
    config = knobs.resolve("cpu-small", {"num_layers": 4, "num_loops": 1, "loop_start": 1, "loop_end": 2, "loop_from_frac": 0.25})
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, 1024, (1, 32))
    looped = model.logits(ids)
    model.looping = False
    assert float((looped - model.logits(ids)).abs().max().detach()) > 1e-3
    assert [looping_at(config, t, 100.0) for t in (0.0, 24.9, 25.0, 90.0)] == [False, False, True, True]
    assert looping_at(knobs.resolve("cpu-small", {}), 90.0, 100.0) is False


def test_a_looped_segment_outside_the_layers_is_refused_naming_it():
    with pytest.raises(ProtocolError, match="loop_start=2..loop_end=5 must lie within the num_layers=4"):
        knobs.resolve("cpu-small", {"num_layers": 4, "num_loops": 1, "loop_start": 2, "loop_end": 5})
    with pytest.raises(ProtocolError, match="start <= end"):
        knobs.resolve("cpu-small", {"num_layers": 4, "num_loops": 1, "loop_start": 3, "loop_end": 1})


def test_parameter_names_and_shapes_are_the_documented_ones():
    config = knobs.resolve("cpu-small", {"activation": "swiglu", "tie_embeddings": False, "num_layers": 3})
    state = build_model(config).state_dict()
    dim, hidden, vocab = 128, 256, 1024
    kv = dim // 4 * 2
    expected = {
        "tok_emb.weight": (vocab, dim),
        "lm_head.weight": (vocab, dim),
        "skip_weights": (1, dim),
        "blocks.0.resid_mix": (2, dim),
        "blocks.0.attn_scale": (dim,),
        "blocks.0.mlp_scale": (dim,),
        "blocks.0.attn.c_q.weight": (dim, dim),
        "blocks.0.attn.c_k.weight": (kv, dim),
        "blocks.0.attn.c_v.weight": (kv, dim),
        "blocks.0.attn.proj.weight": (dim, dim),
        "blocks.0.attn.q_gain": (4,),
        "blocks.0.mlp.fc.weight": (hidden, dim),
        "blocks.0.mlp.gate.weight": (hidden, dim),
        "blocks.0.mlp.proj.weight": (dim, hidden),
    }
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name
    assert {k for k in state if not k.startswith("blocks.")} == {"tok_emb.weight", "lm_head.weight", "skip_weights"}
    assert len([k for k in state if k.startswith("blocks.0.")]) == 11


def test_output_projections_start_at_zero_so_a_fresh_model_predicts_from_the_embedding_alone():
    model = build_model(knobs.resolve("cpu-small", {}))
    for block in model.blocks:
        assert torch.count_nonzero(block.attn.proj.weight) == 0
        assert torch.count_nonzero(block.mlp.proj.weight) == 0


def test_logit_softcap_bounds_logits_and_zero_disables_it():
    torch.manual_seed(0)
    capped = build_model(knobs.resolve("cpu-small", {"logit_softcap": 2.0, "tied_embed_init_std": 1.0}))
    ids = torch.randint(0, 1024, (2, 16))
    assert capped.logits(ids).abs().max() <= 2.0
    uncapped = build_model(knobs.resolve("cpu-small", {"logit_softcap": 0.0, "tied_embed_init_std": 1.0}))
    uncapped.load_state_dict(capped.state_dict())
    assert uncapped.logits(ids).abs().max() > 2.0


def test_attention_is_causal_so_later_tokens_do_not_change_earlier_losses():
    torch.manual_seed(0)
    model = build_model(knobs.resolve("cpu-small", {"num_layers": 2}))
    for p in model.parameters():  # leave the zero init so attention actually contributes
        p.data.add_(0.02 * torch.randn_like(p))
    x = torch.randint(0, 1024, (1, 32))
    y = torch.randint(0, 1024, (1, 32))
    x2 = x.clone()
    x2[0, 20:] = (x2[0, 20:] + 7) % 1024
    a = model.per_token_loss(x, y)
    b = model.per_token_loss(x2, y)
    assert torch.allclose(a[0, :20], b[0, :20], atol=1e-6)
    assert not torch.allclose(a[0, 20:], b[0, 20:])


VARIANTS = [
    (activation, unique, recurrence)
    for activation in ("relu2", "leaky_relu2", "swiglu")
    for unique, recurrence in ((0, "cycle"), (2, "cycle"), (2, "mirror"))
]


@pytest.mark.parametrize("activation,unique,recurrence", VARIANTS)
def test_every_activation_and_recurrence_variant_trains_and_exports(fineweb, activation, unique, recurrence):
    config = tiny_config(activation=activation, unique_blocks=unique, recurrence=recurrence, leaky_slope=0.3)
    result = train(config, fineweb.train_stream, budget_s=60.0, seed=1, max_steps=12)
    assert result.steps == 12
    first, last = np.mean(result.losses[:2]), np.mean(result.losses[-2:])
    assert last < first - 0.3, f"loss did not fall: {result.losses}"
    blob = export_artifact(result.state, config, **export_options(config))
    loaded = load_artifact(blob)
    assert loaded.config == config
    model = build_model(loaded.config)
    load_numpy_state(model, loaded.state)  # every name and shape fits the rebuilt model
    x = torch.from_numpy(fineweb.val_tokens[:65].astype(np.int64))
    loss = model(x[None, :-1], x[None, 1:])
    assert torch.isfinite(loss) and loss.item() < first


STRUCTURE = {"xsa_last_n": 1, "rope_dims": 16, "ln_scale": True, "smear_gate": True, "skip_gates": True, "bigram_buckets": 64, "bigram_dim": 32}


def test_the_records_structure_knobs_keep_the_model_causal_and_train_and_export(fineweb):
    torch.manual_seed(0)
    model = build_model(knobs.resolve("cpu-small", {"num_layers": 2, **STRUCTURE}))
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    x = torch.randint(0, 1024, (1, 32))
    y = torch.randint(0, 1024, (1, 32))
    x2 = x.clone()
    x2[0, 20:] = (x2[0, 20:] + 7) % 1024
    a, b = model.per_token_loss(x, y), model.per_token_loss(x2, y)
    # the smear and bigram paths read the previous token only: position 19 is still unchanged
    assert torch.allclose(a[0, :20], b[0, :20], atol=1e-6) and not torch.allclose(a[0, 20:], b[0, 20:])
    config = tiny_config(**STRUCTURE | {"rope_dims": 4, "bigram_dim": 8})
    result = train(config, fineweb.train_stream, budget_s=60.0, seed=1, max_steps=12)
    assert np.mean(result.losses[-2:]) < np.mean(result.losses[:2]) - 0.3
    assert float(np.abs(result.state["bigram.embed.weight"]).max()) > 0  # the table learns from zero
    loaded = load_artifact(export_artifact(result.state, config, **export_options(config)))
    load_numpy_state(build_model(loaded.config), loaded.state)


def test_exclusive_self_attention_output_is_orthogonal_to_its_own_value():
    from p2pgolf.trainer.model_torch import Attention

    torch.manual_seed(0)
    attn = Attention(32, 4, 2, 10000.0, 1.5, xsa=True)
    with torch.no_grad():
        attn.proj.weight.copy_(torch.eye(32))  # read the heads' outputs directly
    x = torch.randn(2, 10, 32)
    y = attn(x).detach().view(2, 10, 4, 8)
    v = attn.c_v(x).detach().view(2, 10, 2, 8).repeat_interleave(2, dim=2)  # query head h reads kv head h // 2
    assert float((y * v).sum(-1).abs().max()) < 1e-4
    attn.xsa = False
    assert float((attn(x).detach().view(2, 10, 4, 8) * v).sum(-1).abs().max()) > 1e-2


def test_partial_rope_rotates_only_the_first_dims_and_ln_scale_shrinks_later_blocks():
    from p2pgolf.trainer.model_torch import Attention

    attn = Attention(32, 2, 2, 10000.0, 1.5, rope_dims=4)
    cos, sin = attn._rope(6, torch.device("cpu"))
    assert cos.shape[-1] == 2
    q = torch.randn(1, 2, 6, 16)
    rotated = _rotate(q, cos, sin)
    assert torch.equal(rotated[..., 4:], q[..., 4:]) and not torch.allclose(rotated[..., :4], q[..., :4])
    spec = ModelSpec.from_config(knobs.resolve("cpu-small", {"ln_scale": True}))
    assert [round(spec.ln_factor(b), 4) for b in range(4)] == [1.0, 0.7071, 0.5774, 0.5]
    assert build_model(knobs.resolve("cpu-small", {"ln_scale": True})).blocks[3].ln_factor == pytest.approx(0.5)


def test_bigram_buckets_hash_previous_and_current_token_and_xsa_picks_the_last_layers_blocks():
    from p2pgolf.trainer.model_torch import BigramHash

    bigram = BigramHash(101, 8, 8)
    with torch.no_grad():
        bigram.embed.weight.copy_(torch.arange(101, dtype=torch.float32)[:, None].expand(101, 8))
        bigram.scale.fill_(1.0)
    ids = torch.tensor([[5, 9, 9, 1000]])
    buckets = bigram(ids)[0, :, 0].long().tolist()
    assert buckets == [100, (36313 * 9 ^ 27191 * 5) % 100, (36313 * 9 ^ 27191 * 9) % 100, (36313 * 1000 ^ 27191 * 9) % 100]
    spec = ModelSpec.from_config(knobs.resolve("cpu-small", {"num_layers": 6, "unique_blocks": 3, "xsa_last_n": 2}))
    assert spec.schedule == (0, 1, 2, 0, 1, 2) and spec.xsa_blocks == {1, 2}


def test_value_embeddings_reach_only_the_last_layers_values_and_vanish_at_zero_gain():
    config = knobs.resolve("cpu-small", {"num_layers": 4, "ve_last_n": 2, "ve_dim": 16})
    torch.manual_seed(0)
    model = build_model(config)
    assert [block.attn.ve_scale is not None for block in model.blocks] == [False, False, True, True]
    plain = build_model(knobs.resolve("cpu-small", {"num_layers": 4}))
    shared = {k: v for k, v in model.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(shared)
    with torch.no_grad():
        for p in list(model.parameters()):
            p.add_(0.02 * torch.randn_like(p))
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in plain.state_dict()})
    ids = torch.randint(0, 1024, (1, 16))
    assert not torch.allclose(model.logits(ids), plain.logits(ids), atol=1e-6)
    with torch.no_grad():
        model.value_embed.scale.zero_()
    assert torch.allclose(model.logits(ids), plain.logits(ids), atol=1e-6)


def test_parallel_lanes_keep_the_mlp_off_the_attention_lane_and_start_where_told():
    torch.manual_seed(0)
    config = knobs.resolve("cpu-small", {"num_layers": 4, "parallel_from": 2})
    block = build_model(config).blocks[3]
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lane0, lane1, x0 = (torch.randn(1, 8, 128) for _ in range(3))
    post = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # attention writes lane 0 only
    resid = torch.tensor([1.0, 1.0])
    _, out1 = block.parallel(lane0, lane1, x0, None, resid, post)
    _, again = block.parallel(lane0 + torch.randn_like(lane0), lane1, x0, None, resid, post)
    assert torch.allclose(out1, again, atol=1e-6)  # the MLP lane never read the attention lane
    # lanes that would start past the last layer change nothing: the model is the plain one
    late = build_model(knobs.resolve("cpu-small", {"num_layers": 4, "parallel_from": 9}))
    plain = build_model(knobs.resolve("cpu-small", {"num_layers": 4}))
    with torch.no_grad():
        for p in late.parameters():
            p.add_(0.02 * torch.randn_like(p))
    plain.load_state_dict({k: v for k, v in late.state_dict().items() if k in plain.state_dict()})
    ids = torch.randint(0, 1024, (1, 16))
    assert torch.allclose(late.logits(ids), plain.logits(ids), atol=1e-6)
    early = build_model(knobs.resolve("cpu-small", {"num_layers": 4, "parallel_from": 2}))
    early.load_state_dict(late.state_dict())
    assert not torch.allclose(early.logits(ids), plain.logits(ids), atol=1e-4)

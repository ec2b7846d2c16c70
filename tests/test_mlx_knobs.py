"""Every knob of the vocabulary changes what the MLX backend produces: nothing is silently ignored.

For each knob the table below names a context (other knobs it needs to matter, e.g. leaky_slope
needs leaky_relu2), a value other than the context's, and where its effect shows: the trained
weights, the evaluation, the artifact bytes, or the LR schedule the loop ran. The table must
cover the whole vocabulary, so a new knob fails here until the MLX backend handles it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from p2pgolf.protocol.benchmarks import benchmark  # noqa: E402
from p2pgolf.protocol.knobs import KNOBS, resolve  # noqa: E402
from p2pgolf.trainer import evaluate_mlx, train_mlx  # noqa: E402
from p2pgolf.trainer.artifact import export_artifact, export_options  # noqa: E402
from p2pgolf.trainer.datasets import load_benchmark_data  # noqa: E402
from p2pgolf.trainer.schedule import Schedule  # noqa: E402
from p2pgolf.trainer.ttt import TTTSettings  # noqa: E402

TINY = {
    "num_layers": 2,
    "model_dim": 16,
    "num_heads": 2,
    "num_kv_heads": 1,
    "train_seq_len": 16,
    "train_batch_tokens": 256,
    "muon_momentum_warmup_steps": 4,
}
STEPS = 3
UNTIED = {"tie_embeddings": False}

# knob -> (context, value, where the effect shows)
EFFECTS: dict[str, tuple[dict, object, str]] = {
    "num_layers": ({}, 3, "weights"),
    "model_dim": ({}, 32, "weights"),
    "num_heads": ({}, 4, "weights"),
    "num_kv_heads": ({}, 2, "weights"),
    "mlp_mult": ({}, 3.0, "weights"),
    "mlp_hidden": ({}, 24, "weights"),
    "vocab_size": ({}, 300, "weights"),
    "tie_embeddings": ({}, False, "weights"),
    "rope_base": ({}, 100.0, "weights"),
    "logit_softcap": ({}, 5.0, "weights"),
    "qk_gain_init": ({}, 0.5, "weights"),
    "tied_embed_init_std": ({}, 0.05, "weights"),
    "activation": ({}, "swiglu", "weights"),
    "xsa_last_n": ({}, 1, "weights"),
    "rope_dims": ({}, 4, "weights"),
    "ln_scale": ({}, True, "weights"),
    "smear_gate": ({}, True, "weights"),
    "skip_gates": ({}, True, "weights"),
    "bigram_buckets": ({}, 64, "weights"),
    "bigram_dim": ({"bigram_buckets": 64}, 16, "weights"),
    "ve_last_n": ({}, 1, "weights"),
    "parallel_from": ({}, 1, "weights"),
    "ve_dim": ({"ve_last_n": 1}, 16, "weights"),
    "leaky_slope": ({"activation": "leaky_relu2"}, 0.1, "weights"),
    "unique_blocks": ({}, 1, "weights"),
    "recurrence": ({"num_layers": 4, "unique_blocks": 2}, "mirror", "weights"),
    "num_loops": ({"num_layers": 3, "loop_start": 1, "loop_end": 1}, 1, "weights"),
    "loop_start": ({"num_layers": 3, "num_loops": 1, "loop_end": 2}, 1, "weights"),
    "loop_end": ({"num_layers": 3, "num_loops": 1}, 1, "weights"),
    # from half of a 1000 s budget: the 3 training steps run unlooped, unlike from the start
    "loop_from_frac": ({"num_layers": 3, "num_loops": 1}, 0.5, "weights"),
    "train_seq_len": ({}, 32, "weights"),
    "train_batch_tokens": ({}, 512, "weights"),
    "grad_accum_steps": ({}, 2, "accumulation"),
    "matrix_lr": ({}, 0.05, "weights"),
    "muon_momentum": ({}, 0.5, "weights"),
    "muon_momentum_warmup_start": ({}, 0.5, "weights"),
    "muon_momentum_warmup_steps": ({}, 1, "weights"),
    "muon_backend_steps": ({}, 2, "weights"),
    "muon_weight_decay": ({}, 0.1, "weights"),
    "muon_row_normalize": ({}, True, "weights"),
    "muon_ns_coeffs": ({}, "polar_express", "weights"),
    "adam_weight_decay": ({}, 0.5, "weights"),
    "embed_weight_decay": ({}, 0.5, "weights"),
    "embed_lr": (UNTIED, 0.1, "weights"),
    "head_lr": (UNTIED, 0.1, "weights"),
    "tied_embed_lr": ({}, 0.1, "weights"),
    "scalar_lr": ({}, 0.1, "weights"),
    "beta1": ({}, 0.5, "weights"),
    "beta2": ({}, 0.5, "weights"),
    "adam_eps": ({}, 1e-4, "weights"),
    "grad_clip_norm": ({}, 0.01, "weights"),
    "warmup_steps": ({}, 3, "weights"),
    "warmdown_frac": ({}, 1.0, "schedule"),
    # a million steps at a few ms each outlast the 1000 s budget: the decay starts at once
    "warmdown_steps": ({}, 1000000, "schedule"),
    "min_lr_frac": ({"warmdown_frac": 1.0}, 0.5, "schedule"),
    "wd_taper_from_frac": ({"muon_weight_decay": 0.5, "wd_taper_final_mult": 0.0}, 0.5, "weight decay"),
    "wd_taper_final_mult": ({"muon_weight_decay": 0.5, "wd_taper_from_frac": 0.5}, 0.25, "weight decay"),
    "ema_decay": ({}, 0.5, "weights"),
    # 3 warm-up steps run at LR 1/3, 2/3, 1: snapshots after the first two are averaged
    "swa_every": ({"warmup_steps": 3, "swa_start_lr_scale": 1.0}, 1, "weights"),
    # below 0.5 only the first step is a snapshot (one: no averaging); below 0.9, two
    "swa_start_lr_scale": ({"warmup_steps": 3, "swa_every": 1}, 0.9, "weights"),
    "eval_seq_len": ({}, 32, "evaluation"),
    "eval_stride": ({}, 4, "evaluation"),
    # the 512 scored tokens in two chunks: training after the first changes the second's score
    "ttt_steps": ({"ttt_chunk_tokens": 256}, 2, "evaluation"),
    "ttt_lr": ({"ttt_steps": 1, "ttt_chunk_tokens": 256}, 0.01, "evaluation"),
    "ttt_chunk_tokens": ({"ttt_steps": 1, "ttt_lr": 0.01}, 256, "evaluation"),  # two chunks of the 512 scored, not one
    "quant_bits": ({}, 4, "artifact"),
    "qat": ({"quant_bits": 4}, "full", "weights"),
    # a warm-down over the whole budget puts the LR just under 1 from step 1: a threshold of 1
    # turns late QAT on there, the default 0.15 does not
    "qat_from_lr_scale": ({"qat": "late", "quant_bits": 4, "warmdown_frac": 1.0}, 1.0, "weights"),
    "compressor": ({}, "lzma", "artifact"),
    "embed_precision": ({}, "fp16", "artifact"),
    "mlp_precision": ({}, "int4", "artifact"),
    "fp16_max_numel": ({}, 65536, "artifact"),
    "code_container": ({"quant_bits": 6}, "bytes", "artifact"),  # at 8 bits both containers are the same bytes
    "byte_shuffle": ({}, True, "artifact"),
    "row_scale_rule": ({}, "reference", "artifact"),
    # a clip moves codes; the compressed length of a tiny model may not change
    "row_clip": ({"quant_bits": 4}, "search", "artifact bytes"),
    "gptq": ({"quant_bits": 4}, True, "gptq"),
    "gptq_calib_tokens": ({"quant_bits": 4, "gptq": True}, 256, "gptq"),
    "row_clip_sigmas": ({"row_clip": "sdclip", "quant_bits": 4}, 2.0, "artifact bytes"),  # a trained tiny model's rows sit under the 1/127 floor
}


def test_the_table_covers_every_knob_of_the_vocabulary():
    assert sorted(EFFECTS) == sorted(KNOBS)


@lru_cache(maxsize=None)
def _smoke():
    return load_benchmark_data(benchmark("smoke"), None)


@lru_cache(maxsize=None)
def _run(diff_items: tuple) -> tuple:
    config = resolve("smoke-tiny", {**TINY, **dict(diff_items)})
    lr_trace: list[float] = []
    result = train_mlx.train(
        config,
        _smoke().train_stream,
        budget_s=1000.0,
        seed=0,
        device="cpu",
        max_steps=STEPS,
        report_every_s=0.0,
        progress=lambda report: lr_trace.append((report.step, report.elapsed_s, report.lr_scale)) if report.micro == 0 else None,
    )
    return config, result, tuple(lr_trace)


def _evaluate(config, state):
    model = train_mlx.model_from_state(config, state)
    seq_len = config["eval_seq_len"] or config["train_seq_len"]
    return evaluate_mlx.evaluate(model, _smoke().val_tokens, _smoke().byte_tables, seq_len=seq_len, stride=config["eval_stride"], token_cap=512,
                                 ttt=TTTSettings.from_config(config))  # fmt: skip


def _gptq_artifact(config, state) -> bytes:
    from p2pgolf.trainer.calibration import calibration_batches
    from p2pgolf.trainer.run_mlx import grams_of

    grams = grams_of(state, config, calibration_batches(config, _smoke().train_stream)) if config["gptq"] else None
    return export_artifact(state, config, **export_options(config), hessians=grams)


def _decayed(config) -> float:
    """A Muon matrix of ones after one MLX step with a zero gradient at 90% of a 1000 s budget:
    only the (tapered) weight decay moves it."""
    from p2pgolf.trainer.optim_mlx import MixedOptimizer

    w = {"blocks.0.mlp.fc.weight": mx.ones((4, 4))}
    step = MixedOptimizer(w, config).step(w, {k: mx.zeros_like(v) for k, v in w.items()}, lr_scale=1.0, momentum=0.0,
                                          weight_decay_scale=Schedule.from_config(config, 1000.0).weight_decay(900.0))  # fmt: skip
    return float(step["blocks.0.mlp.fc.weight"][0, 0])


def _states_differ(a: dict, b: dict) -> bool:
    if sorted(a) != sorted(b) or any(a[k].shape != b[k].shape for k in a):
        return True
    return max(float(np.abs(a[k] - b[k]).max()) for k in a) > 1e-6


@pytest.mark.parametrize("name", sorted(EFFECTS))
def test_knob_changes_what_mlx_produces(name):
    context, value, where = EFFECTS[name]
    base_config, base, base_lrs = _run(tuple(sorted(context.items())))
    assert base_config[name] != value, "the table must pick a value other than the context's"
    config, changed, lrs = _run(tuple(sorted({**context, name: value}.items())))
    assert config[name] == value
    if where == "weights":
        assert _states_differ(base.state, changed.state)
    elif where == "accumulation":
        # Each micro-batch reads its own span of the stream (as the torch backend and the
        # challenge's loader do), so the text shifts by a token per micro-batch; the first
        # step's loss is that of almost the same text. Exactness against torch's accumulation
        # is checked in test_mlx_parity.py.
        assert (base.grad_accum_steps, changed.grad_accum_steps) == (1, value)
        assert changed.micro_batch_tokens * value == base.micro_batch_tokens
        assert abs(changed.losses[0] - base.losses[0]) < 1e-3
    elif where == "schedule":
        # The two runs' steps take different wall-clock times, so their traces are not compared
        # with each other: each must be its own config's schedule at the times its steps began,
        # and at those times the changed schedule must decay (warm-down) or hold (floor) the LR.
        assert [step for step, _, _ in lrs] == [step for step, _, _ in base_lrs] == list(range(1, STEPS + 1))
        assert lrs[0][2] == base_lrs[0][2] == 1.0  # at 0 s nothing has decayed yet
        base_schedule, schedule = Schedule.from_config(base_config, 1000.0), Schedule.from_config(config, 1000.0)
        began = [0.0] + [elapsed for _, elapsed, _ in lrs[:-1]]
        assert [lr for _, _, lr in lrs] == [schedule.lr(step - 1, t) for (step, _, _), t in zip(lrs, began)]
        base_began = [0.0] + [elapsed for _, elapsed, _ in base_lrs[:-1]]
        assert [lr for _, _, lr in base_lrs] == [base_schedule.lr(step - 1, t) for (step, _, _), t in zip(base_lrs, base_began)]
        for step, _, _ in lrs[1:]:
            t = began[step - 1]
            if name == "min_lr_frac":
                assert schedule.lr(step - 1, t) > base_schedule.lr(step - 1, t)
            else:
                assert schedule.lr(step - 1, t) < base_schedule.lr(step - 1, t) == 1.0
    elif where == "evaluation":
        before, after = _evaluate(base_config, base.state), _evaluate(config, base.state)
        assert before.val_loss != after.val_loss
    elif where == "gptq":
        # calibrated on MLX (run_mlx.grams_of) and exported with those Gram matrices
        assert _gptq_artifact(base_config, base.state) != _gptq_artifact(config, base.state)
    elif where == "weight decay":
        # the taper acts late in a run (its multiplier at 90% of the budget), on MLX's Muon step
        assert _decayed(base_config) != _decayed(config)
    elif where in ("artifact", "artifact bytes"):
        before = export_artifact(base.state, base_config, **export_options(base_config))
        after = export_artifact(base.state, config, **export_options(config))
        assert len(before) != len(after) if where == "artifact" else before != after
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(f"unknown effect {where!r}")

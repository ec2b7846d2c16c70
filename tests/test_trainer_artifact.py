"""The artifact: quantised, compressed, reloadable by any backend, and honestly sized."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgolf.protocol import knobs
from p2pgolf.trainer.artifact import (
    ArtifactError,
    code_bytes,
    code_files,
    dequantise_rows,
    encoding_for,
    export_artifact,
    load_artifact,
    quantise_rows,
)
from p2pgolf.trainer.evaluate_torch import evaluate
from p2pgolf.trainer.model_torch import build_model
from p2pgolf.trainer.train_torch import load_numpy_state, state_to_numpy, train

from trainer_helpers import build_fineweb, tiny_config

CONFIG = knobs.resolve("cpu-small", {})


def _state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "tok_emb.weight": rng.normal(0, 0.02, (300, 64)).astype(np.float32),
        "blocks.0.attn.c_q.weight": rng.normal(0, 0.1, (64, 64)).astype(np.float32),
        "blocks.0.attn.q_gain": np.full(4, 1.5, np.float32) + rng.normal(0, 1e-4, 4).astype(np.float32),
        "blocks.0.resid_mix": rng.normal(0, 1, (2, 64)).astype(np.float32),
        "skip_weights": rng.normal(1, 0.1, (1, 64)).astype(np.float32),
        "extra.vector": rng.normal(0, 1, 7).astype(np.float32),
    }


def test_matrices_are_quantised_per_row_control_tensors_kept_in_fp32_vectors_in_fp16():
    assert encoding_for("blocks.3.mlp.fc.weight", (256, 64)) == "int"
    assert encoding_for("tok_emb.weight", (1024, 512)) == "int"
    assert encoding_for("blocks.3.resid_mix", (2, 64)) == "f32"
    assert encoding_for("skip_weights", (4, 64)) == "f32"
    assert encoding_for("blocks.0.attn.q_gain", (8,)) == "f32"
    assert encoding_for("extra.vector", (7,)) == "f16"
    state = _state()
    loaded = load_artifact(export_artifact(state, CONFIG))
    assert np.array_equal(loaded.state["blocks.0.resid_mix"], state["blocks.0.resid_mix"])
    assert np.array_equal(loaded.state["blocks.0.attn.q_gain"], state["blocks.0.attn.q_gain"])
    assert np.array_equal(loaded.state["extra.vector"], state["extra.vector"].astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("bits", [8, 6, 5, 4, 3, 2])
def test_round_trip_error_of_each_row_is_within_half_a_quantisation_step(bits):
    rng = np.random.default_rng(bits)
    m = rng.normal(0, 0.05, (33, 50)).astype(np.float32)
    packed, scales = quantise_rows(m, bits)
    assert packed.nbytes == -(-33 * 50 * bits // 8)  # bit-packed: bits per value, not a byte
    back = dequantise_rows(packed, scales, m.shape, bits)
    step = scales.astype(np.float32)[:, None]
    # Values inside the clip range land within half a step (plus fp16 scale rounding).
    inside = np.abs(m) <= (2 ** (bits - 1) - 1) * step
    assert np.all(np.abs(back - m)[inside] <= 0.5 * step.repeat(50, 1)[inside] * 1.01)


def test_export_is_deterministic_and_both_compressors_load_back():
    state = _state()
    for compressor in ("zlib", "lzma"):
        a = export_artifact(state, CONFIG, compressor=compressor)
        assert a == export_artifact(dict(reversed(list(state.items()))), CONFIG, compressor=compressor)
        loaded = load_artifact(a)
        assert loaded.compressor == compressor and loaded.config == CONFIG
        assert {k: v.shape for k, v in loaded.state.items()} == {k: v.shape for k, v in state.items()}


def test_fewer_bits_make_a_smaller_artifact():
    rng = np.random.default_rng(0)
    state = {"w": rng.normal(0, 0.05, (512, 512)).astype(np.float32)}
    sizes = [len(export_artifact(state, CONFIG, quant_bits=b)) for b in (8, 6, 4)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] < 0.6 * sizes[0]


@pytest.mark.parametrize(
    "blob,message",
    [
        (b"not an artifact", "bad magic"),
        (b"P2PGOLF-ARTIFACT\nq" + b"\0" * 10, "unknown compressor"),
        (b"P2PGOLF-ARTIFACT\nz" + b"garbage", "corrupt compressed payload"),
    ],
)
def test_malformed_artifacts_are_refused_with_the_reason(blob, message):
    with pytest.raises(ArtifactError, match=message):
        load_artifact(blob)


def test_truncated_payload_is_refused():
    import zlib

    good = export_artifact(_state(), CONFIG)
    payload = zlib.decompress(good[len(b"P2PGOLF-ARTIFACT\nz") :])
    cut = b"P2PGOLF-ARTIFACT\nz" + zlib.compress(payload[: len(payload) - 500])
    with pytest.raises(ArtifactError):
        load_artifact(cut)


def test_non_finite_weights_are_not_exported():
    state = _state()
    state["extra.vector"][3] = np.nan
    with pytest.raises(ArtifactError, match="extra.vector"):
        export_artifact(state, CONFIG)


def test_code_bytes_are_the_size_of_the_packed_bundle_of_every_source_file_that_makes_the_model():
    """The rule: what `p2pgolf submission` writes as train_gpt.py (trainer/bundle.py) is what is
    counted; its modules are those of code_files, docstrings removed, in one lzma stream."""
    import ast
    import base64
    import json
    import lzma
    import re

    from p2pgolf.trainer.bundle import bundle_source

    files = {p.name for p in code_files("torch")}
    assert {"model_torch.py", "train_torch.py", "muon_torch.py", "evaluate_torch.py", "artifact.py", "knobs.py", "compression.py"} <= files
    source = bundle_source(bench_name="smoke", base="smoke-tiny", diff={}, seed=0, budget_s=600.0)
    assert code_bytes("torch") == len(source.encode())
    # A real candidate's bundle differs only by its candidate line (its exact size is counted
    # by the submission itself).
    other = bundle_source(bench_name="smoke", base="smoke-tiny", diff={"num_layers": 3}, seed=7, budget_s=600.0)
    assert abs(len(other.encode()) - code_bytes("torch")) < 200
    packed = re.search(r'b85decode\("([^"]+)"\)', source).group(1)
    modules = json.loads(lzma.decompress(base64.b85decode(packed)))
    files = code_files("torch")
    assert len(modules) == len(files) + 1 and modules.pop("p2pgolf") == ""  # and the empty namespace
    by_path = {}
    for name in modules:
        rel = name.removeprefix("p2pgolf.").replace(".", "/")
        by_path[name] = next(p for p in files if str(p).endswith((f"/{rel}.py", f"/{rel}/__init__.py")))
    assert sorted(map(str, by_path.values())) == sorted(map(str, files))

    def defs(tree):  # every function and class, with its statement count once docstrings are gone
        out = []
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                body = n.body[1:] if ast.get_docstring(n) is not None else n.body
                out.append((n.name, len(body) or 1))
        return sorted(out)

    for name, path in by_path.items():
        bundled, original = ast.parse(modules[name]), ast.parse(path.read_text())
        assert defs(bundled) == defs(original), path  # the same code, statement for statement
        assert all(ast.get_docstring(n) is None for n in ast.walk(bundled) if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))), path
    # Far less than the sources as written: the prose and the repetition cost nothing.
    assert code_bytes("torch") < sum(p.stat().st_size for p in code_files("torch")) / 3
    with pytest.raises(ArtifactError, match="backend"):
        code_files("jax")
    with pytest.raises(ArtifactError, match="backend"):
        code_bytes("jax")


def test_int8_round_trip_changes_val_bpb_by_less_than_0_01_on_a_trained_model(tmp_path):
    # Tolerance: int8 per-row quantisation of a model this size costs well under 0.01 bpb.
    data = build_fineweb(tmp_path / "data")
    config = tiny_config()
    result = train(config, data.train_stream, budget_s=60.0, seed=5, max_steps=15)
    before = build_model(config)
    load_numpy_state(before, result.state)
    loaded = load_artifact(export_artifact(result.state, config))
    after = build_model(loaded.config)
    load_numpy_state(after, loaded.state)
    assert not all(np.array_equal(a, b) for a, b in zip(state_to_numpy(before).values(), state_to_numpy(after).values()))
    kw = dict(seq_len=64, token_cap=8192)
    pre = evaluate(before, data.val_tokens, data.byte_tables, **kw)
    post = evaluate(after, data.val_tokens, data.byte_tables, **kw)
    assert abs(post.val_bpb - pre.val_bpb) < 0.01

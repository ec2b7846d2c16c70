"""Building shards from text, custom benchmark ids, and loading challenge-layout data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from p2pgolf.protocol.benchmarks import BENCHMARKS
from p2pgolf.trainer.build import BuildError, build_shards_from_text
from p2pgolf.trainer.datasets import DataError, TokenStream, custom_benchmark, load_benchmark_data, train_batches
from p2pgolf.trainer.shards import read_shard, write_shard

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODEL = DATA / "fineweb_1024_bpe.model"
SAMPLE = DATA / "fineweb_edu_sample.txt"


@pytest.fixture(scope="module")
def sample_lines(tmp_path_factory):
    """The first 600 lines of the FineWeb-Edu sample (a quick, real corpus)."""
    lines = SAMPLE.read_text(encoding="utf-8").split("\n")[:600]
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, [line for line in lines if line.strip()]


@pytest.fixture(scope="module")
def built(sample_lines, tmp_path_factory):
    path, _ = sample_lines
    out = tmp_path_factory.mktemp("built") / "mini"
    return build_shards_from_text([path], MODEL, out, val_docs=40, doc_split="line", shard_tokens=50_000)


def test_each_document_is_bos_then_its_tokens_and_the_first_docs_are_validation(built, sample_lines):
    _, lines = sample_lines
    sp = spm.SentencePieceProcessor(model_file=str(MODEL))
    val = np.concatenate([read_shard(p) for p in built.val_files])
    train = np.concatenate([read_shard(p) for p in built.train_files])
    expected_val = [t for line in lines[:40] for t in [1, *sp.encode(line)]]
    expected_train = [t for line in lines[40:] for t in [1, *sp.encode(line)]]
    assert list(val) == expected_val and list(train) == expected_train
    assert (built.docs_val, built.docs_train) == (40, len(lines) - 40)
    assert (built.tokens_val, built.tokens_train) == (len(expected_val), len(expected_train))
    assert len(built.train_files) > 1  # 50k-token shards: a long split spans several


def test_manifest_digests_define_a_custom_benchmark_that_loads(built):
    manifest = json.loads(built.manifest_path.read_text())
    bench = custom_benchmark(built.out_dir, budget_s=120)
    assert bench.task == "custom-text" and bench.val_digest == manifest["val_sha256"] == built.val_sha256
    assert bench.tokenizer_digest == BENCHMARKS["parameter-golf/sp1024-10min"].tokenizer_digest
    assert bench.id != custom_benchmark(built.out_dir, budget_s=60).id
    data = load_benchmark_data(bench, built.out_dir)
    assert data.vocab_size == 1024 and data.bos_id == 1 and len(data.val_tokens) == built.tokens_val
    assert int((data.val_tokens == 1).sum()) == 40
    assert data.train_tokens_available == built.tokens_train


def test_identical_inputs_build_identical_shards(built, sample_lines, tmp_path):
    again = build_shards_from_text([sample_lines[0]], MODEL, tmp_path / "mini", val_docs=40, doc_split="line", shard_tokens=50_000)
    for a, b in zip(built.val_files + built.train_files, again.val_files + again.train_files, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert again.val_sha256 == built.val_sha256


def test_changed_validation_shards_are_refused_by_the_loader(built, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(built.out_dir, copy)
    bench = custom_benchmark(copy)
    val = np.array(read_shard(copy / built.val_files[0].name))
    val[5] = 7
    write_shard(copy / built.val_files[0].name, val)
    with pytest.raises(DataError, match="validation shards' sha256"):
        load_benchmark_data(bench, copy)


def test_blank_line_and_jsonl_documents(tmp_path):
    para = tmp_path / "notes.txt"
    para.write_text("first paragraph\nstill first\n\n\nsecond one\n  \nthird\n", encoding="utf-8")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "fourth doc"}\n\n{"text": "fifth doc", "id": 3}\n', encoding="utf-8")
    res = build_shards_from_text([para, jsonl], MODEL, tmp_path / "out", val_fraction=0.2)
    assert (res.docs_val, res.docs_train) == (1, 4)
    tokens = np.concatenate([read_shard(p) for p in res.val_files + res.train_files])
    assert int((tokens == 1).sum()) == 5


@pytest.mark.parametrize(
    "kwargs, fault",
    [
        (dict(val_docs=None), "exactly one of val_docs"),
        (dict(val_docs=3, val_fraction=0.5), "exactly one of val_docs"),
        (dict(val_docs=0), "at least 1"),
        (dict(val_docs=None, val_fraction=1.5), "val_fraction must be in"),
        (dict(val_docs=9), "leaves no training documents"),
        (dict(val_docs=1, doc_split="sentences"), "doc_split 'sentences'"),
    ],
)
def test_bad_build_options_are_named(tmp_path, kwargs, fault):
    text = tmp_path / "t.txt"
    text.write_text("a\n\nb\n\nc\n", encoding="utf-8")
    with pytest.raises(BuildError, match=fault):
        build_shards_from_text([text], MODEL, tmp_path / "out", **kwargs)


def test_bad_inputs_are_named_and_existing_output_is_kept(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a\n\nb\n", encoding="utf-8")
    with pytest.raises(BuildError, match="missing.txt: text file not found"):
        build_shards_from_text([tmp_path / "missing.txt"], MODEL, tmp_path / "o", val_docs=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n', encoding="utf-8")
    with pytest.raises(BuildError, match='bad.jsonl:2: expected an object with a string "text"'):
        build_shards_from_text([bad], MODEL, tmp_path / "o", val_docs=1)
    with pytest.raises(BuildError, match="t.txt: not a SentencePiece model"):
        build_shards_from_text([text], text, tmp_path / "o", val_docs=1)
    first = build_shards_from_text([text], MODEL, tmp_path / "o", val_docs=1)
    before = {p.name: p.read_bytes() for p in first.out_dir.iterdir()}
    with pytest.raises(BuildError, match="already holds"):
        build_shards_from_text([text], MODEL, tmp_path / "o", val_docs=1)
    assert {p.name: p.read_bytes() for p in first.out_dir.iterdir()} == before


def test_challenge_layout_loads_and_missing_files_name_the_fetch_command(built, tmp_path):
    bench = BENCHMARKS["parameter-golf/sp1024-10min"]
    with pytest.raises(DataError, match=r"fineweb_1024_bpe.model.*p2pgolf data fetch --data-dir"):
        load_benchmark_data(bench, tmp_path)
    shard_dir = tmp_path / "datasets" / "fineweb10B_sp1024"
    shard_dir.mkdir(parents=True)
    (tmp_path / "tokenizers").mkdir()
    shutil.copyfile(MODEL, tmp_path / "tokenizers" / "fineweb_1024_bpe.model")
    shutil.copyfile(built.val_files[0], shard_dir / "fineweb_val_000000.bin")
    for i, p in enumerate(built.train_files):
        shutil.copyfile(p, shard_dir / f"fineweb_train_{i:06d}.bin")
    data = load_benchmark_data(bench, tmp_path)
    assert list(data.val_tokens) == list(read_shard(built.val_files[0]))
    (shard_dir / "fineweb_train_000001.bin").write_bytes(b"\0" * 2000)
    with pytest.raises(DataError, match="fineweb_train_000001.bin: bad magic 0"):
        load_benchmark_data(bench, tmp_path)


def test_token_stream_crosses_chunks_wraps_and_splits_ranks():
    chunks = [np.arange(0, 5, dtype=np.uint16), np.zeros(0, dtype=np.uint16), np.arange(5, 12, dtype=np.uint16)]
    stream = TokenStream([lambda c=c: c for c in chunks])
    assert list(stream.take(4)) == [0, 1, 2, 3]
    assert list(stream.take(6)) == [4, 5, 6, 7, 8, 9]
    assert list(stream.take(5)) == [10, 11, 0, 1, 2]
    whole = np.arange(0, 1000, dtype=np.uint16)
    r0 = next(train_batches(TokenStream([lambda: whole]), 2, 3, rank=0, world=2))
    r1 = next(train_batches(TokenStream([lambda: whole]), 2, 3, rank=1, world=2))
    assert r0.inputs.tolist() == [[0, 1, 2], [3, 4, 5]] and r0.targets.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert r1.inputs.tolist() == [[6, 7, 8], [9, 10, 11]] and r1.targets.tolist() == [[7, 8, 9], [10, 11, 12]]
    with pytest.raises(DataError, match="every train chunk is empty"):
        TokenStream([lambda: np.zeros(0, np.uint16)]).take(1)

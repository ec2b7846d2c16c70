"""The built-in trainer takes the tokenizer from the candidate: a parameter-golf candidate on the
sp4096 variant trains and is scored on that variant's shards and byte tables, its record names
the variant, and a re-evaluation of its artifact scores it the same way. Built on a real
4096-piece SentencePiece model trained on the FineWeb-Edu sample."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.trainer.config import make_run_config
from p2pgolf.trainer.datasets import DataError, load_benchmark_data

from trainer_helpers import FINEWEB_TEXT

BENCH = "parameter-golf/sp1024-10min"
TINY = {"num_layers": 2, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "train_seq_len": 32, "train_batch_tokens": 512, "vocab_size": 4096}


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory):
    import sentencepiece as spm

    from p2pgolf.trainer.build import build_shards_from_text

    root = tmp_path_factory.mktemp("variant")
    model = io.BytesIO()
    lines = FINEWEB_TEXT.read_text()[:300_000].split("\n")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=4096, model_type="bpe", minloglevel=2)
    (root / "tokenizers").mkdir()
    tok = root / "tokenizers" / "fineweb_4096_bpe.model"
    tok.write_bytes(model.getvalue())
    built = root / "built"
    build_shards_from_text([FINEWEB_TEXT], tok, built, val_fraction=0.05, doc_split="line", name="sample-sp4096")
    shards = root / "datasets" / "fineweb10B_sp4096"
    shards.mkdir(parents=True)
    for f in built.glob("text_*.bin"):  # the challenge's layout, as `data fetch --variant` writes it
        shutil.copy(f, shards / f.name.replace("text_", "fineweb_"))
    return root


def test_the_variant_data_loads_with_its_own_vocabulary_and_byte_tables(variant_dir):
    data = load_benchmark_data(benchmark(BENCH), variant_dir, "sp4096")
    assert data.vocab_size == 4096 and int(data.val_tokens.max()) >= 1024  # ids only sp4096 has
    assert data.tokenizer_path.name == "fineweb_4096_bpe.model"
    with pytest.raises(DataError, match=r"challenge data \(sp8192\) missing: .*fetch --variant sp8192"):
        load_benchmark_data(benchmark(BENCH), variant_dir, "sp8192")
    with pytest.raises(DataError, match="smoke has data in its tokenizer byte256 only, not sp4096"):
        load_benchmark_data(benchmark("smoke"), None, "sp4096")


def test_a_run_config_checks_the_candidates_tokenizer_and_its_vocabulary(variant_dir):
    run = make_run_config(BENCH, "cpu-small", TINY, data_dir=variant_dir, tokenizer="sp4096")
    assert run.tokenizer_name == "sp4096" and type(run).from_json(run.to_json()) == run
    assert make_run_config(BENCH, "cpu-small", {}, data_dir=variant_dir, tokenizer="sp1024").tokenizer == ""
    with pytest.raises(ProtocolError, match="vocab_size=1024 is smaller than the 4096 token ids .* in tokenizer sp4096"):
        make_run_config(BENCH, "cpu-small", {}, data_dir=variant_dir, tokenizer="sp4096")
    with pytest.raises(ProtocolError, match="tokenizer 'sp2048' is not one benchmark .* known: sp1024, sp4096, sp8192"):
        make_run_config(BENCH, "cpu-small", TINY, data_dir=variant_dir, tokenizer="sp2048")


def test_a_variant_candidate_trains_records_its_tokenizer_and_reevaluates_the_same(variant_dir, tmp_path):
    from p2pgolf.trainer.reeval import reevaluate
    from p2pgolf.trainer.runner import ARTIFACT_NAME, launch

    run = make_run_config(BENCH, "cpu-small", TINY, data_dir=variant_dir, tokenizer="sp4096", budget_s=300, backend="torch", device="cpu",
                          compile="off", eval_token_cap=2048, extra={"max_steps": 3})  # fmt: skip
    outcome = launch(run, tmp_path / "run")
    assert outcome.ok, outcome.error
    assert outcome.result["tokenizer"] == "sp4096"
    artifact = tmp_path / "run" / ARTIFACT_NAME
    again = reevaluate(artifact, BENCH, data_dir=variant_dir, backend="torch", device="cpu", eval_token_cap=2048, tokenizer="sp4096")
    assert again.val_bpb == pytest.approx(outcome.result["metrics"]["val_bpb"], abs=1e-6)
    assert np.isfinite(again.val_bpb)

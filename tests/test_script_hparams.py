"""A script's hyperparameter vocabulary is read by parsing, never by running it."""

from __future__ import annotations

import base64
import lzma
import zlib

import pytest

from p2pgolf.protocol import candidates
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.script_hparams import RANGE_FACTOR, ScriptParseError, read_hyperparameters

SOURCE = '''
import os, uuid
import torch  # never imported: the source is parsed, not run
raise SystemExit("running this script is a test failure")
BASE_LR = 0.04

class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
    run_id = os.environ.get("RUN_ID", str(uuid.uuid4()))
    seed = int(os.environ.get("SEED", 1337))
    iterations = int(os.environ.get("ITERATIONS", 20000))
    train_batch_tokens = int(os.environ.get("TRAIN_BATCH_TOKENS", 512 * 1024))
    matrix_lr = float(os.environ.get("MATRIX_LR", BASE_LR))
    scalar_lr = float(os.environ.get("SCALAR_LR", matrix_lr / 2))
    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))
    qk_gain_init = float(os.environ.get("QK_GAIN_INIT", "1.5"))
    logit_softcap = float(os.environ.get("LOGIT_SOFTCAP", 0.0))
    optimizer = os.getenv("OPTIMIZER", "muon")

def main():
    world = int(os.environ["WORLD_SIZE"])
'''


def test_names_types_and_defaults_are_read_under_every_cast():
    vocab = read_hyperparameters(SOURCE)
    got = {n: (p.type, p.default) for n, p in vocab.params.items()}
    assert got == {
        "DATA_PATH": (str, "./data/datasets/fineweb10B_sp1024"),
        "RUN_ID": (str, None),
        "SEED": (int, 1337),
        "ITERATIONS": (int, 20000),
        "TRAIN_BATCH_TOKENS": (int, 524288),  # arithmetic on literals
        "MATRIX_LR": (float, 0.04),  # a name assigned a literal earlier
        "SCALAR_LR": (float, 0.02),  # arithmetic on an earlier hyperparameter
        "TIE_EMBEDDINGS": (bool, True),  # bool(int("1"))
        "QK_GAIN_INIT": (float, 1.5),  # float("1.5")
        "LOGIT_SOFTCAP": (float, 0.0),
        "OPTIMIZER": (str, "muon"),  # os.getenv
        "WORLD_SIZE": (int, None),  # os.environ[...]: required
    }
    assert not vocab.wrapped


def test_what_cannot_be_read_is_named():
    vocab = read_hyperparameters(SOURCE)
    assert any(p.startswith("RUN_ID (line 9): default 'str(uuid.uuid4())' is not a constant") for p in vocab.problems)
    assert any(p.startswith("WORLD_SIZE (line 21): read without a default") for p in vocab.problems)
    with pytest.raises(ScriptParseError, match=r"not valid Python: .* at line 1"):
        read_hyperparameters("def (:\n")
    with pytest.raises(ScriptParseError, match="no hyperparameters found"):
        read_hyperparameters("print('hello')\n")
    with pytest.raises(ScriptParseError, match="not UTF-8"):
        read_hyperparameters(b"\xff\xfe")


def test_mutation_ranges_come_from_defaults_unless_stated():
    vocab = read_hyperparameters(SOURCE)
    lr = vocab["MATRIX_LR"]
    assert (lr.low, lr.high) == pytest.approx((0.04 / RANGE_FACTOR, 0.04 * RANGE_FACTOR))
    assert (vocab["ITERATIONS"].low, vocab["ITERATIONS"].high) == (1250, 320000)
    assert vocab["TIE_EMBEDDINGS"].searchable  # a flip
    assert not vocab["LOGIT_SOFTCAP"].searchable  # a zero default has no multiplicative range
    assert not vocab["OPTIMIZER"].searchable and not vocab["RUN_ID"].searchable
    assert "SEED" not in {p.name for p in vocab.searchable()}  # the runner sets it
    stated = vocab.with_ranges({"LOGIT_SOFTCAP": (0.0, 50.0)})
    assert stated["LOGIT_SOFTCAP"].searchable and stated.check_diff({"LOGIT_SOFTCAP": 30}) == {"LOGIT_SOFTCAP": 30.0}
    with pytest.raises(ProtocolError, match="only numbers take a range; OPTIMIZER is str"):
        vocab.with_ranges({"OPTIMIZER": (0, 1)})


def test_check_diff_normalises_and_names_what_is_wrong():
    vocab = read_hyperparameters(SOURCE)
    assert vocab.check_diff({"MATRIX_LR": 0.05, "ITERATIONS": 20000.0, "TIE_EMBEDDINGS": False, "QK_GAIN_INIT": 2}) == {
        "MATRIX_LR": 0.05,
        "QK_GAIN_INIT": 2.0,
        "TIE_EMBEDDINGS": False,
    }
    with pytest.raises(ProtocolError, match=r"unknown hyperparameter 'MATRIX_LRR': the script does not read it \(did you mean MATRIX_LR"):
        vocab.check_diff({"MATRIX_LRR": 0.05})
    with pytest.raises(ProtocolError, match=r"hyperparameter MATRIX_LR: 1.0 is outside the allowed range \[0.0025, 0.64\]"):
        vocab.check_diff({"MATRIX_LR": 1.0})
    with pytest.raises(ProtocolError, match=r"hyperparameter TIE_EMBEDDINGS: expected true or false, got 0"):
        vocab.check_diff({"TIE_EMBEDDINGS": 0})
    with pytest.raises(ProtocolError, match=r"hyperparameter ITERATIONS: expected an integer, got 1.5"):
        vocab.check_diff({"ITERATIONS": 1.5})
    with pytest.raises(ProtocolError, match=r"SEED is set by the runner"):
        vocab.check_diff({"SEED": 1})


def _b85_lzma_wrapper(source: str) -> str:
    payload = base64.b85encode(lzma.compress(source.encode())).decode()
    return f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{payload}")))\n'


def test_self_extracting_wrappers_are_decoded_not_executed():
    plain = read_hyperparameters(SOURCE)
    wrapped = read_hyperparameters(_b85_lzma_wrapper(SOURCE))
    assert wrapped.wrapped and wrapped.params == plain.params
    payload = base64.b64encode(zlib.compress(SOURCE.encode())).decode()
    other = f'from zlib import decompress\nfrom base64 import b64decode as d\nexec(decompress(d("{payload}")).decode("utf-8"))\n'
    assert read_hyperparameters(other.encode()).params == plain.params
    twice = read_hyperparameters(_b85_lzma_wrapper(_b85_lzma_wrapper(SOURCE)))
    assert twice.params == plain.params


def test_a_wrapper_that_cannot_be_decoded_is_named():
    with pytest.raises(ScriptParseError, match=r"line 2: the wrapper's lzma.decompress payload does not decode"):
        read_hyperparameters('import lzma, base64\nexec(lzma.decompress(base64.b85decode("0000")))\n')
    with pytest.raises(ScriptParseError, match=r"line 2: exec of an expression that is not a decodable literal"):
        read_hyperparameters('import urllib.request\nexec(urllib.request.urlopen("http://x").read())\n')


def test_script_base_helpers():
    sha = "ab" * 32
    base = candidates.script_base(sha)
    assert base == "script:" + sha and candidates.is_script_base(base) and candidates.script_sha(base) == sha
    assert not candidates.is_script_base("naive-baseline")
    with pytest.raises(ProtocolError, match="is not a script base"):
        candidates.script_sha("script:xyz")
    with pytest.raises(ProtocolError, match="is not 64 lowercase hex"):
        candidates.script_base("AB" * 32)

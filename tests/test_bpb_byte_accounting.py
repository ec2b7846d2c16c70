"""val_bpb byte accounting against hand counts on real text with the challenge tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from p2pgolf.trainer.byte_accounting import ByteTables, bits_per_byte, target_bytes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODEL = DATA / "fineweb_1024_bpe.model"
SAMPLE = DATA / "fineweb_edu_sample.txt"
BOS, UNK = 1, 3


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(MODEL))


@pytest.fixture(scope="module")
def tables():
    return ByteTables.from_sentencepiece(MODEL)


def _per_target(tables, ids):
    seq = np.asarray([BOS, *ids])
    return list(tables.target_bytes(seq[:-1], seq[1:]))


def test_unknown_characters_count_zero_and_the_space_after_them_is_not_counted(sp, tables):
    ids = sp.encode("héllo ☃ 𝔘 x")
    # The tokenizer has no byte fallback: é and ☃ become <unk>; NFKC turns 𝔘 into U.
    assert [sp.id_to_piece(i) for i in ids] == ["h", "<unk>", "ll", "o", "▁", "<unk>", "▁U", "▁", "x"]
    # By hand: h=1, é(unk)=0, ll=2, o=1, space=1, ☃(unk)=0, "▁U" after unk = only U=1, space=1, x=1.
    assert _per_target(tables, ids) == [1, 0, 2, 1, 1, 0, 1, 1, 1]


def test_leading_space_right_after_bos_is_not_counted_but_is_elsewhere(sp, tables):
    the = sp.piece_to_id("▁the")
    assert sp.id_to_piece(the) == "▁the"
    # "▁the" after BOS (a control token): 3 bytes; after a word: 4 bytes (" the").
    assert _per_target(tables, [the, the]) == [3, 4]


def test_bos_targets_count_zero_bytes_between_documents(sp, tables):
    a = sp.encode("cat")
    and_ = sp.piece_to_id("▁and")
    assert sp.id_to_piece(and_) == "▁and"
    seq = np.asarray([BOS, *a, BOS, and_])
    per = tables.target_bytes(seq[:-1], seq[1:])
    # "cat" = 3 bytes, the BOS target = 0, "▁and" right after BOS = 3 bytes (its space dropped).
    assert list(per[len(a) :]) == [0, 3]
    assert int(per.sum()) == 3 + 0 + 3


def test_sample_byte_total_matches_utf8_spans_of_the_original_text(sp, tables):
    """Each line of the FineWeb-Edu sample is a document after BOS. Expected bytes come from the
    original text: its UTF-8 length, minus the spans that became <unk>, minus one for a space
    that directly follows BOS or <unk> - counted from sentencepiece's surface spans, not tables."""
    lines = [line for line in SAMPLE.read_text(encoding="utf-8").split("\n") if line]
    checked = unk_docs = spaces_after_boundary = 0
    expected_total = 0
    tokens: list[int] = []
    for line in lines:
        pieces = sp.encode(line, out_type="proto").pieces
        spans = [(p.id, line.encode()[p.begin : p.end]) for p in pieces]
        # Only documents the normalizer leaves unchanged (it strips and collapses some whitespace
        # and applies NFKC): there the surface spans tile the text and are the pieces.
        if sum(len(s) for _, s in spans) != len(line.encode("utf-8")) or any(pid != UNK and span.decode().replace(" ", "▁") != sp.id_to_piece(pid) for pid, span in spans):
            continue
        expected = len(line.encode("utf-8"))
        prev_boundary = True  # BOS
        for pid, span in spans:
            if pid == UNK:
                expected -= len(span)
                unk_docs += 1
            elif prev_boundary and span.startswith(b" "):
                expected -= 1
                spaces_after_boundary += 1
            prev_boundary = pid == UNK
        expected_total += expected
        tokens += [BOS] + [pid for pid, _ in spans]
        checked += 1
    assert checked > 0.9 * len(lines) and unk_docs > 0 and spaces_after_boundary > 0
    seq = np.asarray(tokens)
    assert tables.sequence_bytes(seq) == expected_total
    assert int(target_bytes(tables, seq[:-1], seq[1:]).sum()) == expected_total


def test_tables_mark_specials_as_zero_byte_boundaries(sp, tables):
    assert tables.size == 1024
    for i in (0, 1, 2, 3):  # <pad> <s> </s> <unk>
        assert tables.is_boundary[i] and tables.base_bytes[i] == 0 and not tables.has_leading_space[i]
    assert not tables.is_boundary[4:].any()
    padded = ByteTables.from_sentencepiece(MODEL, vocab_size=1100)
    assert padded.size == 1100 and padded.is_boundary[1024:].all() and (padded.base_bytes[1024:] == 0).all()


def test_byte_level_tables_count_one_byte_per_byte_token():
    tables = ByteTables.byte_level()
    text = "naïve ☃\n".encode("utf-8")
    seq = np.frombuffer(b"\x00" + text, dtype=np.uint8).astype(np.int64)
    assert tables.sequence_bytes(seq) == len(text)
    wider = ByteTables.byte_level(260)
    assert int(wider.target_bytes(np.array([65, 65]), np.array([256, 66])).sum()) == 1


def test_bad_ids_and_shapes_are_rejected(tables):
    with pytest.raises(ValueError, match="outside \\[0, 1024\\)"):
        tables.target_bytes(np.array([1]), np.array([1024]))
    with pytest.raises(ValueError, match="shape"):
        tables.target_bytes(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="at least 256"):
        ByteTables.byte_level(100)


def test_bits_per_byte_is_nats_over_ln2_over_bytes():
    assert bits_per_byte(100 * math.log(2), 100) == pytest.approx(1.0, rel=1e-15)
    assert bits_per_byte(3.0, 4) == pytest.approx(3.0 / math.log(2) / 4, rel=1e-15)
    with pytest.raises(ValueError, match="0 bytes"):
        bits_per_byte(1.0, 0)

"""SPEC.md renders and says what the code does: every table row has its header's number of
cells (an unescaped `|` in the knob table split its rows on main), the parameter-count formula
of section 4.1 (written again here from the SPEC) gives the counts of section 7.4 and of the
code, and -0.0 has the encoding and the treatment section 1 gives it."""

from __future__ import annotations

import re

import pytest

from conftest import REPO_ROOT
from p2pgolf.protocol import canonical, knobs
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.spec_tables import PARAMETER_EXAMPLES

SPEC = (REPO_ROOT / "protocol" / "SPEC.md").read_text()


def cells(row: str) -> int:
    """GitHub's cell count: split on `|` not preceded by a backslash, even inside code spans."""
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


def tables(text: str) -> list[list[str]]:
    found, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found + ([current] if current else [])


def test_every_table_row_has_as_many_cells_as_its_header():
    found = tables(SPEC)
    assert len(found) >= 8
    for table in found:
        width = cells(table[0])
        bad = [row for row in table if cells(row) != width]
        assert not bad, f"rows with the wrong number of cells under {table[0]!r}: {bad[:3]}"


def spec_parameters(c) -> int:
    """Section 4.1's formula, as written there."""
    d, kv, vocab = c["model_dim"], c["model_dim"] // c["num_heads"] * c["num_kv_heads"], c["vocab_size"]
    h = c["mlp_hidden"] if c["mlp_hidden"] > 0 else max(1, round(c["mlp_mult"] * c["model_dim"]))  # Python rounds half to even
    mats = 3 if c["activation"] == "swiglu" else 2
    blocks = c["unique_blocks"] if c["unique_blocks"] > 0 else c["num_layers"]
    b, w = c["bigram_buckets"], c["bigram_dim"]
    bigram = 0 if b == 0 else b * w + (d * w if w != d else 0)
    u = c["ve_dim"]
    value = 0 if c["ve_last_n"] == 0 else vocab * u + (kv * u if u != kv else 0)
    return blocks * (2 * d * d + 2 * d * kv + mats * d * h) + vocab * d * (1 if c["tie_embeddings"] else 2) + bigram + value


def test_the_parameter_formula_gives_the_listed_counts_and_the_codes():
    section = SPEC[SPEC.index("### 7.4 Parameter counts"):]
    listed = [int(row.rsplit("|", 2)[1]) for row in tables(section)[0][2:]]
    assert len(listed) == len(PARAMETER_EXAMPLES)
    for (base, diff), count in zip(PARAMETER_EXAMPLES, listed):
        config = knobs.resolve(base, diff)
        assert spec_parameters(config) == knobs.estimate_parameters(config) == count, (base, diff)
    assert round(18 * 0.25) == 4 and round(22 * 0.25) == 6  # the two tie cases listed round to even


def test_negative_zero_has_its_own_encoding_and_keeps_its_sign():
    assert canonical.encode(0.0).hex() == "cb0000000000000000" and "`cb 00 00 00 00 00 00 00 00`" in SPEC
    assert canonical.encode(-0.0).hex() == "cb8000000000000000" and "`cb 80 00 00 00 00 00 00 00`" in SPEC
    back = canonical.decode(bytes.fromhex("cb8000000000000000"), max_len=16)
    assert repr(back) == "-0.0"
    assert repr(canonical.decode(canonical.encode({"x": [-0.0]}), max_len=64)["x"][0]) == "-0.0"


@pytest.mark.parametrize("name", ["warmdown_frac", "logit_softcap"])  # defaults 0.2 and 30.0
def test_a_knob_diff_holding_negative_zero_is_refused_and_zero_is_accepted(name):
    with pytest.raises(ProtocolError, match="not normalised"):
        knobs.check_normalised("cpu-small", {name: -0.0})
    knobs.check_normalised("cpu-small", {name: 0.0})

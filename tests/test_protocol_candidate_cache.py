"""`candidate_id` remembers ids it computed; the cache must never change an answer or hide an error."""

from __future__ import annotations

import pytest

from p2pgolf.protocol import candidates
from p2pgolf.protocol.errors import ProtocolError


def test_cached_candidate_ids_equal_freshly_computed_ones_for_values_that_hash_alike():
    # 2.0 == 2 == True and 0.0 == -0.0 in Python; the cache key must still keep them apart.
    diffs = [{"mlp_mult": 2.5}, {"mlp_mult": 3}, {"mlp_mult": 3.0}, {"tie_embeddings": False}, {"logit_softcap": 0.0}, {"logit_softcap": -0.0}, {}, {"num_layers": 3, "mlp_mult": 2.5}, {"mlp_mult": 2.5, "num_layers": 3}]
    for _ in range(2):  # the second round is answered from the cache
        for diff in diffs:
            try:
                fresh = candidates._candidate_id("smoke-tiny", diff, "byte256")
            except ProtocolError as exc:
                with pytest.raises(ProtocolError, match=str(exc)[:20]):
                    candidates.candidate_id("smoke-tiny", diff, "byte256")
            else:
                assert candidates.candidate_id("smoke-tiny", diff, "byte256") == fresh


def test_a_bad_diff_raises_every_time_and_is_never_cached():
    for _ in range(3):
        with pytest.raises(ProtocolError, match="tie_embeddings"):
            candidates.candidate_id("smoke-tiny", {"tie_embeddings": 1}, "byte256")
        with pytest.raises(ProtocolError, match="unknown knob"):
            candidates.candidate_id("smoke-tiny", {"no_such_knob": 1}, "byte256")
    with pytest.raises(ProtocolError, match="unknown base"):
        candidates.candidate_id("no-such-base", {}, "byte256")
    with pytest.raises(ProtocolError):
        candidates.candidate_id("smoke-tiny", ["not", "a", "map"], "byte256")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="tokenizer"):
        candidates.candidate_id("smoke-tiny", {}, "Not A Tokenizer")
    assert not any(k[0] == "no-such-base" or k[1] == "Not A Tokenizer" or any(name == "no_such_knob" for name, _, _ in k[2]) for k in candidates._CACHE)

"""Script moves stay inside the script's vocabulary: multiplicative steps within range, bool flips,
recombination only within one script."""

from __future__ import annotations

import numpy as np

from p2pgolf.pool.estimator import CandidateInfo
from p2pgolf.pool.script_proposals import mutate_script, recombine_scripts
from p2pgolf.protocol.candidates import candidate_id, script_base
from p2pgolf.protocol.script_hparams import read_hyperparameters
from script_helpers import script_bytes

VOCAB = read_hyperparameters(script_bytes("tiny_golf.py"))
BASE = script_base("ab" * 32)


def info(diff, base=BASE, rep="r" * 64, tokenizer="byte256"):
    return CandidateInfo(candidate_id(base, diff, tokenizer), base, diff, (rep,), rep, (), (), (), 1.0, 1, 1.0, tokenizer)


def test_mutations_move_one_hyperparameter_within_its_range_and_normalise():
    rng = np.random.default_rng(0)
    parent = info({"LR": 0.01})
    seen = set()
    for _ in range(200):
        p = mutate_script(parent, VOCAB, rng)
        assert p is not None and p.base == BASE and p.tokenizer == "byte256" and p.operator == "mutate"
        ((name, value),) = p.changed
        seen.add(name)
        assert VOCAB.check_diff(p.diff) == dict(p.diff)  # valid and normalised
        hp = VOCAB[name]
        if hp.type is bool:
            assert value is (not hp.default)
        else:
            assert hp.low <= value <= hp.high and type(value) is hp.type
        assert p.parents == (parent.representative,)
        assert p.candidate == candidate_id(BASE, p.diff, "byte256")
    assert {"LR", "TIE_EMBEDDINGS", "MODEL_DIM"} <= seen and "SEED" not in seen and "DATA_PATH" not in seen
    lr_moves = [mutate_script(parent, VOCAB, rng, name="LR").diff["LR"] for _ in range(100)]
    ratios = np.log(np.array(lr_moves) / 0.01)
    assert np.median(np.abs(ratios)) < np.log(4.0)  # short multiplicative steps, not uniform over the range


def test_recombination_unites_diffs_of_one_script_only():
    rng = np.random.default_rng(1)
    a, b = info({"LR": 0.01}, rep="a" * 64), info({"MODEL_DIM": 64}, rep="b" * 64)
    p = recombine_scripts(a, b, VOCAB, rng)
    assert p.diff == {"LR": 0.01, "MODEL_DIM": 64} and p.parents == ("a" * 64, "b" * 64)
    assert recombine_scripts(a, info({"MODEL_DIM": 64}, base=script_base("cd" * 32)), VOCAB, rng) is None
    assert recombine_scripts(a, info({"MODEL_DIM": 64}, tokenizer="sp1024"), VOCAB, rng) is None


def test_the_bandit_builds_only_on_the_script_s_chosen_tokenizer():
    from p2pgolf.pool import bandit
    from p2pgolf.pool.estimator import estimate
    from p2pgolf.pool.evidence import Evidence, result_evidence

    me = "aa" * 32
    rows = [
        result_evidence("1" * 64, base=BASE, diff={"LR": 0.01}, author=me, hw="cpu:x", val_bpb=2.0, budget_s=60, tokenizer="sp1024"),
        result_evidence("2" * 64, base=BASE, diff={"LR": 0.005}, author=me, hw="cpu:x", val_bpb=2.5, budget_s=60, tokenizer="sp8192"),
    ]
    post = estimate(Evidence(tuple(rows)), lambda key: "own", "cpu:x", budget_s=60)
    for seed in range(20):
        choice = bandit.choose(post, np.random.default_rng(seed), runnable=lambda b: True, vocabularies={BASE: VOCAB},
                               script_tokenizers={BASE: "sp8192"}, operators=("mutate", "recombine"))
        assert choice.proposal.tokenizer == "sp8192"

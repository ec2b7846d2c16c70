"""Checking a claim before evaluating it: the artifact's digest and size against the record,
records that cannot be re-evaluated, a file that is no artifact, and the command's one-line
errors."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess

import pytest

from node_procs import P2PGOLF, make_home
from records_factory import make_result, signed_attestation, signed_result

from p2pgolf.node.verification import VerifyError, check_artifact, eval_token_cap, not_reevaluable, reeval_tolerance
from p2pgolf.pool.store import PoolStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import sign_record

BENCH = benchmark("smoke")


def _claim(identity, data: bytes, **metrics):
    result = make_result(identity)
    result = dataclasses.replace(result, artifact=hashlib.sha256(data).hexdigest(), metrics=dataclasses.replace(result.metrics, **metrics))
    return sign_record(result, identity.signing_key)


def test_an_artifact_whose_digest_is_not_the_records_is_refused(tmp_path):
    me = Identity.generate()
    claim = _claim(me, b"the real bytes", artifact_bytes=200_000)
    path = tmp_path / "model.p2pgolf"
    path.write_bytes(b"the real bytes")
    assert check_artifact(claim, path, BENCH) == len(b"the real bytes")
    path.write_bytes(b"other bytes")
    with pytest.raises(VerifyError, match="SHA-256 is .* not .* as record"):
        check_artifact(claim, path, BENCH)


def test_an_artifact_larger_than_its_record_claims_or_over_the_cap_is_refused(tmp_path):
    me = Identity.generate()
    data = b"x" * 5000
    path = tmp_path / "model.p2pgolf"
    path.write_bytes(data)
    with pytest.raises(VerifyError, match="more than the 4,000 the record claims"):
        check_artifact(_claim(me, data, artifact_bytes=4000), path, BENCH)
    tiny = dataclasses.replace(BENCH, size_cap=6000)
    with pytest.raises(VerifyError, match="over the size cap of 6,000"):
        check_artifact(_claim(me, data, artifact_bytes=10**6), path, tiny)


def test_records_that_cannot_be_re_evaluated_say_why():
    me = Identity.generate()
    result = signed_result(me)  # names no artifact
    assert "names no artifact" in not_reevaluable(result) and "reproduction" in not_reevaluable(result)
    attestation = signed_attestation(me, result, val_bpb=2.5)
    assert "not a result" in not_reevaluable(attestation)
    assert not_reevaluable(_claim(me, b"abc")) is None


def test_a_capped_claim_is_re_scored_on_the_same_cap_and_the_tolerance_is_the_estimators():
    me = Identity.generate()
    assert eval_token_cap(_claim(me, b"a", eval_tokens=16384, eval_partial=True)) == 16384
    assert eval_token_cap(_claim(me, b"a", eval_tokens=98176, eval_partial=False)) == 0
    assert reeval_tolerance() == pytest.approx(3.0 * 2**0.5 * 0.001 + 0.002)


def test_a_file_that_is_not_an_artifact_gets_a_one_line_error_not_a_score(tmp_path):
    from p2pgolf.trainer.reeval import ReevalError, run_reeval

    path = tmp_path / "junk.p2pgolf"
    path.write_bytes(b"not an artifact at all")
    with pytest.raises(ReevalError, match="bad magic bytes"):
        run_reeval(path, "smoke", device="cpu", timeout_s=120)


def test_verify_without_the_artifact_or_a_running_node_says_what_to_do(tmp_path):
    home, me = make_home(tmp_path, "home")
    claim = _claim(Identity.generate(), b"held by nobody here")
    with PoolStore(home.pool_db) as store:
        store.add_signed(claim)
    done = subprocess.run([P2PGOLF, "--home", str(home.root), "verify", claim.id[:10]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "no node is running to fetch it" in done.stderr
    done = subprocess.run([P2PGOLF, "--home", str(home.root), "pool", "fetch", claim.id[:10]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "start `p2pgolf join`" in done.stderr

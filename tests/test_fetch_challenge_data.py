"""`p2pgolf data fetch` against a loopback server that answers as the Hugging Face Hub does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from p2pgolf.protocol.benchmarks import BENCHMARKS
from hf_server import FakeHub
from p2pgolf.trainer.datasets import load_benchmark_data
from p2pgolf.trainer.fetch import FetchError, fetch_challenge_data
from p2pgolf.trainer.shards import read_shard, write_shard

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "data" / "fineweb_1024_bpe.model"
HUB_REPO = "willdepueoai/parameter-golf"
SHARDS = "datasets/datasets/fineweb10B_sp1024"


def _shard_bytes(tmp: Path, n_tokens: int, seed: int) -> bytes:
    tokens = np.random.default_rng(seed).integers(0, 1024, n_tokens, dtype=np.uint16)
    tokens[0] = 1
    path = tmp / f"s{seed}.bin"
    write_shard(path, tokens)
    return path.read_bytes()


def _manifest(n_val: int = 1, n_train: int = 3) -> bytes:
    return json.dumps({
        "version": "10B",
        "datasets": [
            {"name": "fineweb10B_sp512", "tokenizer_name": "sp_bpe_512", "stats": {"files_val": 1, "files_train": 9}},
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "stats": {"files_val": n_val, "files_train": n_train}},
        ],
        "tokenizers": [
            {"name": "sp_bpe_512", "model_path": "tokenizers/fineweb_512_bpe.model"},
            {"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
        ],
    }).encode()


@pytest.fixture
def hub(tmp_path):
    files = {
        "datasets/manifest.json": _manifest(),
        f"{SHARDS}/fineweb_val_000000.bin": _shard_bytes(tmp_path, 30_000, 1),
        f"{SHARDS}/fineweb_train_000000.bin": _shard_bytes(tmp_path, 20_000, 2),
        f"{SHARDS}/fineweb_train_000001.bin": _shard_bytes(tmp_path, 20_000, 3),
        f"{SHARDS}/fineweb_train_000002.bin": _shard_bytes(tmp_path, 20_000, 4),
        "datasets/tokenizers/fineweb_1024_bpe.model": MODEL.read_bytes(),
        "datasets/tokenizers/fineweb_1024_bpe.vocab": b"<pad>\t0\n<s>\t0\n",
    }
    server = FakeHub(HUB_REPO, files)
    yield server
    server.close()


def _local(data: Path, remote: str) -> Path:
    return data / remote.removeprefix("datasets/")


def test_fetch_places_checked_files_in_the_challenge_layout_and_the_loader_reads_them(hub, tmp_path):
    data = tmp_path / "data"
    result = fetch_challenge_data(data, 2, endpoint=hub.endpoint, progress=False)
    wanted = ["datasets/manifest.json", f"{SHARDS}/fineweb_val_000000.bin", f"{SHARDS}/fineweb_train_000000.bin",
              f"{SHARDS}/fineweb_train_000001.bin", "datasets/tokenizers/fineweb_1024_bpe.model",
              "datasets/tokenizers/fineweb_1024_bpe.vocab"]
    assert list(result.downloaded) == wanted and result.present == ()
    for remote in wanted:
        assert _local(data, remote).read_bytes() == hub.files[remote]
    assert not _local(data, f"{SHARDS}/fineweb_train_000002.bin").exists()
    assert not list(data.rglob("*.part*"))
    assert result.bytes_received == sum(len(hub.files[r]) for r in wanted)
    # Large files came through the CDN redirect, as LFS files do on the real Hub.
    assert any(path.startswith("/cdn/") for _, path, _ in hub.requests)
    loaded = load_benchmark_data(BENCHMARKS["parameter-golf/sp1024-10min"], data)
    assert list(loaded.val_tokens) == list(read_shard(_local(data, f"{SHARDS}/fineweb_val_000000.bin")))

    hub.requests.clear()
    again = fetch_challenge_data(data, 3, endpoint=hub.endpoint, progress=False)
    assert again.downloaded == (f"{SHARDS}/fineweb_train_000002.bin",)
    assert len(again.present) == 6
    assert [m for m, _, _ in hub.requests].count("GET") == 1  # only the new shard's bytes moved


def test_connection_dropped_mid_shard_resumes_with_a_range_request(hub, tmp_path):
    """huggingface_hub writes in 10 MiB pieces and retries a dropped transfer from the last piece
    on disk, so the shard here is 11 MiB and the connection drops 10.5 MiB in."""
    remote = f"{SHARDS}/fineweb_val_000000.bin"
    hub.files[remote] = _shard_bytes(tmp_path, 5_767_168, 9)
    hub.drop_after[remote] = 11_010_048
    result = fetch_challenge_data(tmp_path, 0, endpoint=hub.endpoint, progress=False)
    assert remote in result.downloaded
    assert _local(tmp_path, remote).read_bytes() == hub.files[remote]
    ranges = [rng for method, path, rng in hub.requests if method == "GET" and path.startswith("/cdn/") and rng]
    assert len(ranges) == 1
    start = int(ranges[0].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 11_010_048
    assert result.bytes_received == sum(len(hub.files[r]) for r in result.downloaded)  # no byte written twice


def test_killed_fetch_continues_from_the_bytes_already_on_disk(hub, tmp_path):
    """A fetch process is killed once the first 10 MiB piece of an 11 MiB shard is on disk; the
    next fetch asks the server only for the rest."""
    remote = f"{SHARDS}/fineweb_val_000000.bin"
    hub.files[remote] = _shard_bytes(tmp_path, 5_767_168, 9)
    part = _local(tmp_path, remote).with_name("fineweb_val_000000.bin.part")
    hub.throttle_s, hub.throttle_from = 0.01, 10_747_904
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2pgolf.node.cli", "--home", str(tmp_path / "home"), "data", "fetch", "--train-shards", "0",
         "--data-dir", str(tmp_path), "--quiet"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not (part.exists() and part.stat().st_size > 0):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "download never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
        proc.stderr.close()
    have = part.stat().st_size
    assert 0 < have < len(hub.files[remote]) and not _local(tmp_path, remote).exists()

    hub.throttle_s = 0.0
    hub.requests.clear()
    result = fetch_challenge_data(tmp_path, 0, endpoint=hub.endpoint, progress=False)
    assert _local(tmp_path, remote).read_bytes() == hub.files[remote]
    assert ("GET", f"/cdn/{__import__('hashlib').sha256(hub.files[remote]).hexdigest()}", f"bytes={have}-") in hub.requests
    assert result.bytes_received == sum(len(hub.files[r]) for r in result.downloaded) - have


def test_bad_shard_header_is_reported_by_name_and_never_stored(hub, tmp_path):
    remote = f"{SHARDS}/fineweb_train_000001.bin"
    raw = bytearray(hub.files[remote])
    raw[0:4] = (12345).to_bytes(4, "little")
    hub.files[remote] = bytes(raw)
    with pytest.raises(FetchError, match=r"fineweb_train_000001.bin: not a valid shard: bad magic 12345"):
        fetch_challenge_data(tmp_path, 2, endpoint=hub.endpoint, progress=False)
    assert not _local(tmp_path, remote).exists()
    assert not _local(tmp_path, remote).with_name("fineweb_train_000001.bin.part").exists()
    assert _local(tmp_path, f"{SHARDS}/fineweb_train_000000.bin").exists()  # earlier good files stay


def test_truncated_shard_on_the_server_is_reported(hub, tmp_path):
    remote = f"{SHARDS}/fineweb_val_000000.bin"
    hub.files[remote] = hub.files[remote][:-2]
    with pytest.raises(FetchError, match="fineweb_val_000000.bin: not a valid shard: .*truncated or corrupt"):
        fetch_challenge_data(tmp_path, 0, endpoint=hub.endpoint, progress=False)


def test_corrupt_file_already_on_disk_is_reported_and_kept(hub, tmp_path):
    local = _local(tmp_path, f"{SHARDS}/fineweb_val_000000.bin")
    local.parent.mkdir(parents=True)
    local.write_bytes(b"not a shard at all")
    with pytest.raises(FetchError, match="fineweb_val_000000.bin.*already on disk"):
        fetch_challenge_data(tmp_path, 0, endpoint=hub.endpoint, progress=False)
    assert local.read_bytes() == b"not a shard at all"


def test_requests_the_hub_cannot_satisfy_are_named(hub, tmp_path):
    with pytest.raises(FetchError, match="has 3 training shards; --train-shards 4"):
        fetch_challenge_data(tmp_path / "a", 4, endpoint=hub.endpoint, progress=False)
    with pytest.raises(FetchError, match="manifest.json: could not reach it on someone/else"):
        fetch_challenge_data(tmp_path / "b", 1, repo_id="someone/else", endpoint=hub.endpoint, progress=False)
    hub.files["datasets/tokenizers/fineweb_1024_bpe.model"] = b"a different tokenizer"
    with pytest.raises(FetchError, match="fineweb_1024_bpe.model: sha256 .* is not the challenge tokenizer"):
        fetch_challenge_data(tmp_path / "c", 0, endpoint=hub.endpoint, progress=False)
    hub.files["datasets/manifest.json"] = json.dumps({"datasets": [], "tokenizers": []}).encode()
    with pytest.raises(FetchError, match="no dataset named fineweb10B_sp1024"):
        fetch_challenge_data(tmp_path / "d", 0, endpoint=hub.endpoint, progress=False)


def test_manifest_paths_outside_tokenizers_are_refused(hub, tmp_path):
    manifest = json.loads(_manifest())
    manifest["tokenizers"][1]["vocab_path"] = "../../../etc/evil"
    hub.files["datasets/manifest.json"] = json.dumps(manifest).encode()
    with pytest.raises(FetchError, match="tokenizer path '../../../etc/evil' is not a file under tokenizers/"):
        fetch_challenge_data(tmp_path, 0, endpoint=hub.endpoint, progress=False)


from hypothesis import given, settings
from hypothesis import strategies as st

from p2pgolf.trainer.fetch import _plan

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=40)
    | st.sampled_from(["fineweb10B_sp1024", "sp_bpe_1024", "tokenizers/fineweb_1024_bpe.model", "tokenizers/../x", "tokenizers/a/b", "/etc/x"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["datasets", "tokenizers", "name", "stats", "files_val", "files_train", "tokenizer_name", "model_path", "vocab_path", "path"]
    ) | st.text(max_size=8), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(manifest=st.dictionaries(st.sampled_from(["datasets", "tokenizers", "version"]), _json, max_size=3))
def test_any_manifest_from_the_network_gives_a_safe_plan_or_a_fetch_error(manifest):
    try:
        n_val, n_train, files = _plan(manifest, Path("manifest.json"))
    except FetchError:
        return
    assert n_val >= 1 and n_train >= 0
    assert all(f.startswith("tokenizers/") and ".." not in f.split("/") for f in files)


def _sp_model(vocab: int) -> bytes:
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    text = (REPO.parent / "shared" / "data" / "fineweb_edu_sample.txt").read_text()[:300_000].split("\n")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=out, vocab_size=vocab, model_type="bpe", minloglevel=2)
    return out.getvalue()


def _variant_hub(tmp_path, model: bytes, max_token: int = 4095):
    manifest = json.dumps({
        "datasets": [{"name": "fineweb10B_sp4096", "tokenizer_name": "sp_bpe_4096", "stats": {"files_val": 1, "files_train": 2}}],
        "tokenizers": [{"name": "sp_bpe_4096", "model_path": "tokenizers/fineweb_4096_bpe.model"}],
    }).encode()
    tokens = np.random.default_rng(5).integers(0, max_token + 1, 5000, dtype=np.uint16)
    write_shard(tmp_path / "v.bin", tokens)
    shard = (tmp_path / "v.bin").read_bytes()
    base = "datasets/datasets/fineweb10B_sp4096"
    files = {"datasets/manifest.json": manifest, f"{base}/fineweb_val_000000.bin": shard, f"{base}/fineweb_train_000000.bin": shard,
             "datasets/tokenizers/fineweb_4096_bpe.model": model}
    return FakeHub(HUB_REPO, files)


def test_data_fetch_variant_gets_that_dataset_and_checks_its_tokenizer_and_ids(tmp_path):
    model = _sp_model(4096)
    hub = _variant_hub(tmp_path, model)
    try:
        proc = subprocess.run([sys.executable, "-c", "from p2pgolf.node.cli import main; main()", "--home", str(tmp_path / "home"), "data", "fetch",
                               "--variant", "sp4096", "--quiet", "--data-dir", str(tmp_path / "data")],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "HF_ENDPOINT": hub.endpoint})
        assert proc.returncode == 0, proc.stderr
        assert "challenge data (sp4096)" in proc.stdout
        assert (tmp_path / "data" / "datasets" / "fineweb10B_sp4096" / "fineweb_train_000000.bin").is_file()
        assert (tmp_path / "data" / "tokenizers" / "fineweb_4096_bpe.model").read_bytes() == model
    finally:
        hub.close()
    from p2pgolf.trainer.script_data import script_data_paths

    data_path, tok = script_data_paths(BENCHMARKS["parameter-golf/sp1024-10min"], "sp4096", tmp_path / "data", tmp_path / "cache")
    assert data_path.endswith("datasets/fineweb10B_sp4096") and tok.endswith("tokenizers/fineweb_4096_bpe.model")


def test_a_variant_with_the_wrong_tokenizer_or_out_of_vocabulary_ids_is_refused(tmp_path):
    hub = _variant_hub(tmp_path, (REPO.parent / "shared" / "data" / "fineweb_1024_bpe.model").read_bytes())
    try:
        with pytest.raises(FetchError, match=r"fineweb_4096_bpe.model: 1024 pieces; the sp4096 tokenizer has 4096"):
            fetch_challenge_data(tmp_path / "a", 1, endpoint=hub.endpoint, progress=False, variant="sp4096")
    finally:
        hub.close()
    (tmp_path / "b").mkdir()
    hub = _variant_hub(tmp_path / "b", b"", max_token=5000)
    try:
        with pytest.raises(FetchError, match=r"token id 5000 is outside the variant's vocabulary of 4096"):
            fetch_challenge_data(tmp_path / "c", 1, endpoint=hub.endpoint, progress=False, variant="sp4096")
    finally:
        hub.close()
    with pytest.raises(FetchError, match="unknown data variant 'sp2048'"):
        fetch_challenge_data(tmp_path / "d", 1, progress=False, variant="sp2048")

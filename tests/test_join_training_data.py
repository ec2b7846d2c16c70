"""`p2pgolf join` on the challenge gets its training data first, or says in one line why not."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from node_procs import P2PGOLF, free_port
from test_fetch_challenge_data import MODEL, SHARDS, hub  # noqa: F401  (hub: the loopback Hub fixture)

def _join(home: Path, endpoint: str) -> subprocess.Popen:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    args = [P2PGOLF, "--home", str(home), "join", "--bench", "parameter-golf/sp1024-10min", "--listen", f"/ip4/127.0.0.1/tcp/{free_port()}", "--on-interrupt", "abandon", "--status-every", "3600"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def test_join_on_the_challenge_downloads_the_data_once_then_runs(hub, tmp_path):
    home = tmp_path / "home"
    proc = _join(home, hub.endpoint)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("listening: "):
                break
        assert any("downloading it once" in line for line in lines), lines
        data = home / "data" / "datasets" / "fineweb10B_sp1024"
        assert (data / "fineweb_val_000000.bin").read_bytes() == hub.files[f"{SHARDS}/fineweb_val_000000.bin"]
        assert (data / "fineweb_train_000000.bin").exists()
        assert (home / "data" / "tokenizers" / "fineweb_1024_bpe.model").read_bytes() == MODEL.read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]


def test_join_when_the_hub_is_unreachable_fails_in_one_line(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = _join(tmp_path / "home", closed)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "listening: " not in out
    err = err.strip()  # the progress display may leave a blank line
    assert err.count("\n") == 0 and err.startswith("error: could not get the challenge data"), err
    assert "p2pgolf data fetch" in err and "Traceback" not in err

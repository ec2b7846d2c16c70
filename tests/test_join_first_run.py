"""`p2pgolf join` on a machine that never ran `init`: the README's two-command set-up."""

from __future__ import annotations

import signal
import stat

from p2pgolf.node.home import Home
from node_procs import NodeProc
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.identity import load_identity


def test_join_on_a_fresh_home_creates_the_identity_and_runs(tmp_path):
    home = Home(tmp_path / "new-user")
    home.root.mkdir()  # empty: no key, no pool (the helper keeps join's stderr here)
    node = NodeProc(home, identity=None)  # no identity yet: join must create it
    node.start()
    try:
        node.wait_ready()
        identity = load_identity(home.key_file)
        assert stat.S_IMODE(home.key_file.stat().st_mode) == 0o600
        assert any(identity.peer_id in line and "created a new identity" in line for line in node.lines)
        assert any(line.startswith("listening: ") and line.endswith(identity.peer_id) for line in node.lines)
        assert node.status()["pool_records"] == 0
    finally:
        assert node.stop(signal.SIGINT) == 0
    with TrustStore(home.pool_db) as trust:
        assert trust.own_key == identity.public_hex


def test_join_never_replaces_an_existing_identity(tmp_path):
    home = Home(tmp_path / "user")
    home.root.mkdir()
    first = NodeProc(home, identity=None).start()
    try:
        first.wait_ready()
    finally:
        first.stop()
    key = home.key_file.read_bytes()
    again = NodeProc(home, identity=None).start()
    try:
        again.wait_ready()
        assert not any("created a new identity" in line for line in again.lines)
    finally:
        again.stop()
    assert home.key_file.read_bytes() == key

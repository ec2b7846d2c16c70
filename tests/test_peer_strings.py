"""Strings from peers and records are shown as typed by every command that prints them: a
record whose hardware model is `[/]` and whose note holds `[link=...]` and `:smile:` sits in a
real pool, and the real CLI commands (`pool ls`, `show`, `lineage`, `top`, `explain`,
`stats`, `status`, `peers`) print them literally and exit 0 (on main `pool ls` raised
MarkupError for good, since the pool is append-only)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from p2pgolf.node.cli import cli
from p2pgolf.node.control import serve
from p2pgolf.node.status import NodeStatus, PeerStatus
from p2pgolf.pool.store import PoolStore
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.records import HardwareClass
from records_factory import signed_result

REPO = Path(__file__).resolve().parents[1]
MODEL = "[/]"
LABEL = "[/]x"
NOTE = "[link=https://evil.example]click me[/link] [bold]:smile:"


def invoke(home: Path, *args: str):
    result = CliRunner().invoke(cli, ["--home", str(home), *args], terminal_width=200)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def hostile_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("peerstr") / "home"
    invoke(home, "init")
    liar = Identity.generate()
    hw = HardwareClass("cpu", MODEL, 1, 1000)
    parent = signed_result(liar, hw=hw, note=NOTE, val_bpb=2.4)
    child = signed_result(liar, hw=hw, note=NOTE, val_bpb=2.3, parents=(parent.id,), diff={"model_dim": 96})
    with PoolStore(home / "pool.sqlite") as store:
        assert all(store.add(r.raw).added for r in (parent, child))
    invoke(home, "trust", "pin", liar.public_hex, "--label", LABEL)
    return home, parent, child


def test_pool_ls_show_lineage_stats_and_trust_list_print_markup_as_typed(hostile_home):
    home, parent, child = hostile_home
    assert "cpu:[/]:x1" in invoke(home, "pool", "ls")
    shown = invoke(home, "pool", "show", child.id)
    assert NOTE in shown and "cpu:[/]:x1" in shown
    assert LABEL in invoke(home, "pool", "lineage", child.id)
    assert LABEL in invoke(home, "pool", "stats")
    assert LABEL in invoke(home, "trust", "list")


def test_pool_top_and_explain_print_the_hostile_hardware_class_as_typed(hostile_home):
    home, parent, child = hostile_home
    hw = "cpu:[/]:x1"
    assert hw in invoke(home, "pool", "top", "--hw", hw, "--bench", "smoke")
    assert hw in invoke(home, "pool", "explain", child.record.candidate, "--hw", hw, "--bench", "smoke")


def test_status_and_peers_print_peer_addresses_and_experiment_fields_as_typed(tmp_path):
    """A real control socket serving a status whose peer strings are markup."""
    status = NodeStatus(
        peer_id="[/]peer", addrs=("/ip4/127.0.0.1/tcp/1[/]",), benches=("smoke",),
        peers=(PeerStatus("[link=https://x.example]p[/link]", ("[/]addr",), ("[bold]topic",), 0),),
        pool_records=2, records_in=0, records_in_by_sync=0, records_out=0, rejected=0, gossip_received=0,
        syncs=0, uptime_s=1.0, worker="failed: [/]",
        experiment={"n": 1, "operator": "[/]op", "candidate": "c" * 64, "base": "[link=x]b", "diff": {"model_dim": "[/]"},
                    "phase": "training", "step": 1, "training_s": 1.0, "budget_s": 10.0, "remaining": "9s"},
    )

    class Handler:
        async def control(self, request: dict) -> dict:
            return {"ok": True, "status": status.to_json()}

    home = tmp_path / "h"
    home.mkdir()
    started, box = threading.Event(), {}

    async def main():
        async with trio.open_nursery() as nursery:
            box["scope"], box["token"] = nursery.cancel_scope, trio.lowlevel.current_trio_token()
            await nursery.start(serve, home / "node.sock", Handler())
            started.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        out = invoke(home, "status")
        assert "[/]peer" in out and "failed: [/]" in out and "[/]op" in out and "[link=x]b" in out
        out = invoke(home, "peers")
        assert "[link=https://x.example]p[/link]" in out and "[/]addr" in out and "[bold]topic" in out
    finally:
        trio.from_thread.run_sync(box["scope"].cancel, trio_token=box["token"])
        thread.join(10)


def test_node_makes_every_rich_console_through_plain_console():
    """The guard for code yet to be written: a bare rich Console anywhere in node/ would parse
    peer strings as markup again."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in (REPO / "node").rglob("*.py")
        if path.name != "plain_console.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(?<![\w.])Console\(", line)
    ]
    assert offenders == []

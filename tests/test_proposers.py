"""External proposers in the research loop: a proposer's idea runs with its rationale in the
record's note; proposers that answer garbage, hang, propose unknown or out-of-range knobs or
write megabytes are dropped with their reasons and the loop goes on; the proposer's
environment holds nothing of the node; answers are checked as a peer's diff is."""

from __future__ import annotations

import json
import os
import sys
import time

import psutil
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import recordgen as g
from p2pgolf.node.config import load_config
from p2pgolf.node.home import Home
from p2pgolf.node.proposers.answer import MAX_PROPOSALS, read_answer
from p2pgolf.node.proposers.operator import PROPOSERS_JOURNAL, ProposerOperator, usage_summary
from p2pgolf.node.proposers.spawn import spawn
from p2pgolf.node.proposers.spec import ProposerSpec, parse_spec
from p2pgolf.node.research_loop import Journal
from p2pgolf.pool.bandit import builtin_only
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from proposer_helpers import make_loop, peer_idea, program
from p2pgolf.protocol.errors import ProtocolError

pytestmark = pytest.mark.timeout(120)


def _journal(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "research" / PROPOSERS_JOURNAL).read_text().splitlines()]


def test_a_proposer_s_idea_runs_and_its_rationale_travels_in_the_record_s_note(tmp_path):
    me, peer = g.identity(1), g.identity(2)
    seen = tmp_path / "situation.json"
    argv = program(tmp_path, "good", f"""
        open({str(seen)!r}, "w").write(json.dumps(situation))
        idea = situation["untested"][0]
        json.dump({{"proposals": [{{"base": idea["base"], "diff": {{**idea["diff"], "mlp_mult": 3.0}}, "parents": [idea["record"]],
                                  "rationale": "port the peer's swiglu\\nwith a wider MLP"}}], "usage": {{"tokens": 7}}}}, sys.stdout)
    """)
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        idea = peer_idea(peer)
        store.add(idea.raw)
        op = ProposerOperator(ProposerSpec("good", argv), tmp_path / "research")
        trio.run(make_loop(tmp_path, store, trust, me, 1, [op]).run)
        (start,) = Journal(tmp_path / "research" / "journal.jsonl").starts()
        assert start["operator"] == "proposer:good" and start["diff"] == {"activation": "swiglu", "mlp_mult": 3.0}
        assert start["parents"] == [idea.id] and start["cost"] >= 1.0
        (mine,) = store.query(author=me.public_hex)
        assert mine.record.note == "good: port the peer's swiglu with a wider MLP"
        assert mine.record.parents == (idea.id,)
    doc = json.loads(seen.read_text())
    assert doc["benchmark"]["name"] == "smoke" and doc["hardware"] == "cpu:Test CPU:x2"
    lr = next(k for k in doc["knobs"] if k["name"] == "matrix_lr")
    assert lr["range"] and lr["meaning"] and lr["type"] == "float"
    (untested,) = doc["untested"]
    assert untested["record"] == idea.id and untested["measured_on"] == ["cuda:NVIDIA H100 80GB HBM3:x1"] and untested["sd_bpb"] > 0
    assert doc["peer_notes"] == [{"record": idea.id, "author": peer.public_hex, "candidate": idea.record.candidate, "note": "swiglu helped on my H100", "val_bpb": 2.2}]
    assert doc["recent"] == [] and doc["usage"]["requests"] == 0 and "smoke-tiny" in doc["bases"]
    (entry,) = _journal(tmp_path)
    assert entry["kept"] == 1 and entry["dropped"] == [] and entry["tokens"] == 7 and entry["error"] is None
    assert usage_summary(tmp_path / "research" / PROPOSERS_JOURNAL)["good"]["tokens"] == 7


def test_proposers_that_misbehave_are_dropped_with_reasons_and_the_loop_runs_on(tmp_path):
    me, peer = g.identity(3), g.identity(4)
    pid_file = tmp_path / "hang.pid"
    bad = {
        "garbage": program(tmp_path, "garbage", "print('I think you should try swiglu!')\n"),
        "hang": program(tmp_path, "hang", f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"),
        "knobs": program(tmp_path, "knobs", """
            json.dump({"proposals": [
                {"base": "smoke-tiny", "diff": {"no_such_knob": 1}},
                {"base": "smoke-tiny", "diff": {"num_layers": 10**9}},
                {"base": "smoke-tiny", "diff": {"matrix_lr": "fast"}},
                {"base": "no-such-base", "diff": {}},
                {"base": "smoke-tiny", "diff": {}, "parents": ["ab" * 32]},
                {"base": "smoke-tiny", "diff": {}, "exec": "import os"},
            ]}, sys.stdout)
        """),
        "flood": program(tmp_path, "flood", "sys.stdout.write('[' * (8 << 20))\nsys.stdout.flush()\n"),
        "crash": program(tmp_path, "crash", "raise SystemExit(3)\n"),
    }
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.set_own(me.public_hex)
        store.add(peer_idea(peer).raw)
        ops = [ProposerOperator(ProposerSpec(name, argv), tmp_path / "research", timeout_s=2.0, max_bytes=64 * 1024) for name, argv in bad.items()]
        started = time.monotonic()
        trio.run(make_loop(tmp_path, store, trust, me, 2, ops).run)
        assert time.monotonic() - started < 90
        ends = Journal(tmp_path / "research" / "journal.jsonl").ends()
        assert [e["status"] for e in ends] == ["ok", "ok"]
        starts = Journal(tmp_path / "research" / "journal.jsonl").starts()
        assert not any(s["operator"].startswith("proposer:") for s in starts)
    by_name: dict[str, list[str]] = {}
    for e in _journal(tmp_path):
        assert e["kept"] == 0
        by_name.setdefault(e["proposer"], []).extend(e["dropped"])
    assert set(by_name) == set(bad)  # each was asked (a new proposer is asked first) and gave nothing
    assert any("answer is not JSON" in r for r in by_name["garbage"])
    assert any("no answer within 2 s; killed" in r for r in by_name["hang"])
    assert any("wrote more than 65536 bytes; killed" in r for r in by_name["flood"])
    assert any("exited with status 3" in r for r in by_name["crash"])
    reasons = by_name["knobs"]
    assert any("unknown knob 'no_such_knob'" in r for r in reasons)
    assert any("knob num_layers" in r and "outside the allowed range" in r for r in reasons)
    assert any("knob matrix_lr" in r for r in reasons)
    assert any("unknown base config 'no-such-base'" in r for r in reasons)
    assert any("is not a record this pool holds" in r for r in reasons)
    assert any("unknown field(s) exec" in r for r in reasons)
    assert len([r for r in reasons if r.startswith("proposal ")]) == 6
    hung = int(pid_file.read_text())
    assert not psutil.pid_exists(hung) or psutil.Process(hung).status() == psutil.STATUS_ZOMBIE


def test_a_proposer_sees_no_node_secret_in_its_environment_or_working_directory(tmp_path):
    argv = program(tmp_path, "env", "import os\njson.dump({'env': dict(os.environ), 'cwd': os.getcwd(), 'files': os.listdir('.')}, sys.stdout)\n")
    environ = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "secret-home"), "P2PGOLF_HOME": str(tmp_path / "node"), "AWS_SECRET_ACCESS_KEY": "x", "PROPOSER_CHAT_KEY": "mine"}
    result = spawn(argv, b"{}", timeout_s=30, max_bytes=1 << 20, environ=environ)
    assert result.error is None
    seen = json.loads(result.stdout)
    assert "P2PGOLF_HOME" not in seen["env"] and "AWS_SECRET_ACCESS_KEY" not in seen["env"]
    assert seen["env"]["PROPOSER_CHAT_KEY"] == "mine"
    assert seen["env"]["HOME"] == seen["cwd"] != environ["HOME"] and seen["files"] == []
    assert not os.path.exists(seen["cwd"])  # its private directory is gone afterwards


def _read(doc, **kw):
    kw.setdefault("tokenizer", "byte256")
    kw.setdefault("runnable", builtin_only)
    kw.setdefault("vocabularies", {})
    kw.setdefault("known_record", lambda rid: False)
    return read_answer(json.dumps(doc).encode(), "proposer:t", **kw)


def test_an_answer_is_checked_as_a_peer_s_diff_and_normalised():
    ok = _read({"proposals": [{"base": "smoke-tiny", "diff": {"activation": "swiglu", "num_layers": 4.0}, "rationale": "a\tb"}]})
    (p,) = ok.proposals
    assert p.operator == "proposer:t" and p.tokenizer == "byte256"
    assert "num_layers" not in p.diff or type(p.diff["num_layers"]) is int  # canonical types, base values dropped
    assert ok.rationale[p.candidate] == "a b"
    flood = _read({"proposals": [{"base": "smoke-tiny", "diff": {"mlp_mult": 1.0 + k / 100}} for k in range(MAX_PROPOSALS + 5)]})
    assert len(flood.proposals) <= MAX_PROPOSALS and any("were not read" in r for r in flood.dropped)
    script = _read({"proposals": [{"script": "ab" * 32, "diff": {"LR": 0.1}}]})
    assert script.proposals == [] and "is not approved on this node" in script.dropped[0]
    control = _read({"proposals": [{"base": "smoke-tiny", "diff": {}, "rationale": "bell\x07"}]})
    assert "control characters" in control.dropped[0]
    assert _read([1, 2]).dropped == ['answer must be an object with a "proposals" list']
    deep = read_answer(b"[" * 100_000 + b"]" * 100_000, "proposer:t", tokenizer="byte256", runnable=builtin_only, vocabularies={}, known_record=lambda r: False)
    assert deep.dropped == ["answer is nested too deeply to read"]
    long = _read({"proposals": [{"base": "smoke-tiny", "diff": {"activation": "x" * 100_000}}]})
    assert long.proposals == [] and len(long.dropped[0]) <= 320


def test_proposers_come_from_config_toml_and_bad_names_are_refused(tmp_path, monkeypatch):
    home = Home(tmp_path / "home")
    home.root.mkdir()
    home.config_file.write_text('[proposers]\nheuristics = "python3 examples/proposers/scripted.py --fast"\n')
    monkeypatch.chdir(tmp_path)
    (spec,) = load_config(home).proposers
    assert spec.name == "heuristics" and spec.argv == ("python3", "examples/proposers/scripted.py", "--fast")  # no such file here: kept
    home.config_file.write_text('[proposers]\n"Bad Name" = "x"\n')
    with pytest.raises(ProtocolError, match="proposer name 'Bad Name' must be"):
        load_config(home)
    with pytest.raises(ProtocolError, match="is not NAME=COMMAND"):
        parse_spec("just-a-command")
    assert parse_spec(f"a={sys.executable} -c 'print(1)'").argv == (sys.executable, "-c", "print(1)")
    (tmp_path / "mine.py").write_text("")
    monkeypatch.chdir(tmp_path)  # the proposer runs elsewhere: a path that exists here is made absolute
    assert parse_spec("b=python3 mine.py --flag").argv == ("python3", str(tmp_path / "mine.py"), "--flag")


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20), lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["proposals", "base", "diff", "parents", "rationale", "script", "tokenizer", "usage", "activation", "num_layers"]), c, max_size=4), max_leaves=20).map(lambda d: json.dumps({"proposals": [d]}).encode())))
def test_no_answer_makes_the_check_raise(raw):
    out = read_answer(raw, "proposer:t", tokenizer="byte256", runnable=builtin_only, vocabularies={}, known_record=lambda r: False)
    assert all(p.operator == "proposer:t" for p in out.proposals) and all(isinstance(r, str) for r in out.dropped)

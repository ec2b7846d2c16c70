"""examples/proposers/chat.py against a fake chat-completions endpoint on 127.0.0.1: the request's
shape and bounds, tokens reported to the node, nothing sent unless configured or over the daily
budget, and HTTP errors and timeouts reported as failed requests."""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from p2pgolf.node.proposers.operator import PROPOSERS_JOURNAL, ProposerOperator, usage_summary
from p2pgolf.node.proposers.spawn import spawn
from p2pgolf.node.proposers.spec import ProposerSpec
from p2pgolf.pool.bandit import builtin_only

pytestmark = pytest.mark.timeout(60)
CHAT = (sys.executable, str(Path(__file__).resolve().parents[1] / "examples" / "proposers" / "chat.py"))
SITUATION = {"benchmark": {"name": "smoke"}, "hardware": "cpu:Test CPU:x2", "usage": {"tokens": 0}, "peer_notes": [], "answer": {"max_proposals": 16}}


class FakeChat:
    """An http.server on loopback that records each request and answers as told."""

    def __init__(self, mode: str = "ok", content: str | None = None, usage: dict | None = None):
        self.mode, self.requests = mode, []
        self.content = content or json.dumps({"proposals": [{"base": "smoke-tiny", "diff": {"activation": "swiglu"}, "rationale": "swiglu composes"}]})
        self.usage = {"prompt_tokens": 90, "completion_tokens": 31, "total_tokens": 121} if usage is None else usage
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                if fake.mode == "error":
                    self.send_error(500, "overloaded")
                    return
                if fake.mode == "slow":
                    time.sleep(5)
                reply = {"choices": [{"message": {"role": "assistant", "content": "Here you go:\n```json\n" + fake.content + "\n```"}}]}
                if fake.usage:
                    reply["usage"] = fake.usage
                data = json.dumps(reply).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the proposer gave up waiting (the timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/chat/completions"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat(monkeypatch):
    servers = []

    def start(mode="ok", **env):
        fake = FakeChat(mode)
        servers.append(fake)
        monkeypatch.setenv("PROPOSER_CHAT_ENDPOINT", fake.url)
        monkeypatch.setenv("PROPOSER_CHAT_MODEL", "tiny-model")
        for k, v in env.items():
            monkeypatch.setenv(f"PROPOSER_CHAT_{k}", str(v))
        return fake

    yield start
    for s in servers:
        s.close()


def _ask(situation=SITUATION):
    return spawn(CHAT, json.dumps(situation).encode(), timeout_s=30, max_bytes=1 << 20)


def test_the_request_has_the_chat_completions_shape_and_its_tokens_reach_the_node(chat, tmp_path):
    fake = chat(KEY="sk-test", MAX_TOKENS=123)
    op = ProposerOperator(ProposerSpec("chat", CHAT), tmp_path)
    answer, _ = op.request(SITUATION, 0, tokenizer="byte256", runnable=builtin_only, vocabularies={}, known_record=lambda r: False)
    (req,) = fake.requests
    assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "tiny-model" and body["max_tokens"] == 123
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert json.loads(body["messages"][1]["content"])["hardware"] == "cpu:Test CPU:x2"
    (p,) = answer.proposals
    assert dict(p.diff) == {"activation": "swiglu"} and answer.rationale[p.candidate] == "swiglu composes"
    assert usage_summary(tmp_path / PROPOSERS_JOURNAL)["chat"]["tokens"] == 121


def test_nothing_is_sent_unless_configured(monkeypatch):
    fake = FakeChat()
    try:
        monkeypatch.delenv("PROPOSER_CHAT_ENDPOINT", raising=False)
        monkeypatch.setenv("PROPOSER_CHAT_MODEL", "tiny-model")
        result = _ask()
        assert result.error is None and json.loads(result.stdout)["proposals"] == []
        assert "nothing sent" in result.stderr_tail and fake.requests == []
    finally:
        fake.close()


def test_the_daily_token_budget_and_the_prompt_bound_hold(chat):
    fake = chat(TOKENS_PER_DAY=10_000, PROMPT_TOKENS=500, MAX_TOKENS=100)
    spent = _ask({**SITUATION, "usage": {"tokens": 9_900}})
    assert json.loads(spent.stdout)["proposals"] == [] and "over the daily 10000" in spent.stderr_tail
    assert fake.requests == []
    huge = {**SITUATION, "peer_notes": [{"note": "x" * 200, "record": str(k)} for k in range(500)]}
    result = _ask(huge)
    assert result.error is None
    (req,) = fake.requests
    assert len(req["body"]["messages"][1]["content"]) <= 4 * 500


def test_an_http_error_and_a_timeout_are_failed_requests_with_a_reason(chat):
    chat("error")
    failed = _ask()
    assert failed.error == "exited with status 1" and "answered HTTP 500" in failed.stderr_tail
    chat("slow", TIMEOUT_S=1)
    started = time.monotonic()
    slow = _ask()
    assert slow.error == "exited with status 1" and "no answer from" in slow.stderr_tail
    assert time.monotonic() - started < 4.5  # its own timeout, not the server's 5 s


def test_tokens_are_counted_at_their_bound_when_the_api_reports_none(chat):
    fake = chat(MAX_TOKENS=50)
    fake.usage = {}
    result = _ask()
    assert json.loads(result.stdout)["usage"]["tokens"] >= 50

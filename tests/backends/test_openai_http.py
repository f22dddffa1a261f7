"""The OpenAI-compatible backend against a real llama.cpp server, and against a misbehaving loopback server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fineinstructions.backends.base import SamplingParams
from fineinstructions.backends.openai_http import OpenAICompatibleBackend
from tests.conftest import TEST_MODEL, free_port


@pytest.mark.server
def test_real_llama_cpp_server_batch(llama_server):
    backend = OpenAICompatibleBackend(llama_server, TEST_MODEL, max_concurrency=2, timeout_s=60)
    conversations = [[{"role": "user", "content": f"Say the number {i}."}] for i in range(4)]
    out = backend.generate(conversations, SamplingParams(max_tokens=12))
    assert len(out) == 4
    assert all(g.ok and g.text and 0 < g.completion_tokens <= 12 and g.prompt_tokens > 0 for g in out)
    assert backend.stats.requests == 4 and backend.stats.failures == 0


class FlakyHandler(BaseHTTPRequestHandler):
    """Fails the first `failures` requests with 503 (or 429), then answers like an OpenAI server."""

    failures = 2
    status = 503
    seen = 0
    lock = threading.Lock()

    def do_POST(self):  # noqa: N802 (http.server API)
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length))
        with FlakyHandler.lock:
            FlakyHandler.seen += 1
            fail = FlakyHandler.seen <= FlakyHandler.failures
        if fail:
            self.send_response(FlakyHandler.status)
            if FlakyHandler.status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b"busy")
            return
        reply = {"choices": [{"message": {"content": "echo: " + body["messages"][-1]["content"]},
                              "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), FlakyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FlakyHandler.seen = 0
    yield f"http://127.0.0.1:{port}"
    server.shutdown()


@pytest.mark.parametrize("status", [503, 429])
def test_retries_with_backoff_then_succeeds(flaky_server, status):
    FlakyHandler.failures, FlakyHandler.status = 2, status
    backend = OpenAICompatibleBackend(flaky_server, "m", max_concurrency=1, backoff_s=0.01, max_retries=3)
    out = backend.generate([[{"role": "user", "content": "hi"}]], SamplingParams())
    assert out[0].ok and out[0].text == "echo: hi"
    assert backend.stats.retries == 2


def test_exhausted_retries_become_a_failed_generation_not_an_exception(flaky_server):
    FlakyHandler.failures, FlakyHandler.status = 100, 503
    backend = OpenAICompatibleBackend(flaky_server, "m", backoff_s=0.01, max_retries=2)
    out = backend.generate([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]], SamplingParams())
    assert [g.ok for g in out] == [False, False]
    assert out[0].error.startswith("http_503")
    assert backend.stats.failures == 2


def test_server_down_is_reported_per_request():
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}", "m", backoff_s=0.01, max_retries=1,
                                      timeout_s=2)
    out = backend.generate([[{"role": "user", "content": "a"}]], SamplingParams())
    assert not out[0].ok and "ConnectError" in out[0].error

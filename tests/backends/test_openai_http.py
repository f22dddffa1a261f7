"""The OpenAI-compatible backend against a real llama.cpp server, and against a misbehaving loopback server."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fineinstructions.backends.base import SamplingParams
from fineinstructions.backends.factory import create_backend
from fineinstructions.backends.openai_http import OpenAICompatibleBackend
from fineinstructions.config import BackendConfig
from tests.conftest import TEST_MODEL, free_port


@pytest.mark.server
def test_real_llama_cpp_server_batch(llama_server):
    backend = OpenAICompatibleBackend(llama_server, TEST_MODEL, max_concurrency=2, timeout_s=60)
    conversations = [[{"role": "user", "content": f"Say the number {i}."}] for i in range(4)]
    out = backend.generate(conversations, SamplingParams(max_tokens=12))
    assert len(out) == 4
    assert all(g.ok and g.text and 0 < g.completion_tokens <= 12 and g.prompt_tokens > 0 for g in out)
    assert backend.stats.requests == 4 and backend.stats.failures == 0



def send_completion(handler: BaseHTTPRequestHandler, content: str, completion_tokens: int) -> None:
    """Answer a chat-completions request with one choice holding `content` (the servers of these tests)."""
    data = json.dumps({"choices": [{"message": {"content": content}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": completion_tokens}}).encode()
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)

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
        send_completion(self, "echo: " + body["messages"][-1]["content"], completion_tokens=2)

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


class LimitsHandler(BaseHTTPRequestHandler):
    """An OpenAI-like server whose behaviour the request's model names: "fast", "trickle-N-S" (a valid body
    sent as N 1 KB chunks, S seconds apart), "large-N" (a valid body of about N bytes with a content-length),
    "large-chunked-N" (the same without one), "throttle" (429 asking for an hour's wait)."""

    protocol_version = "HTTP/1.1"  # chunked bodies

    def do_POST(self) -> None:  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        mode, *args = body["model"].split("-")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
            if mode == "throttle":
                self.send_response(429)
                self.send_header("Retry-After", "3600")
                self.send_header("content-length", "4")
                self.end_headers()
                self.wfile.write(b"busy")
            elif mode == "trickle":
                self.chunked(completion(int(args[0]) * 1024), pause_s=float(args[1]))
            elif mode == "large" and args[0] == "chunked":
                self.chunked(completion(int(args[1])), pause_s=0.0)
            else:
                data = completion(int(args[0]) if args else 0)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

    def chunked(self, data: bytes, pause_s: float) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i in range(0, len(data), 1024):
            piece = data[i:i + 1024]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.flush()
            time.sleep(pause_s)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def completion(size: int) -> bytes:
    """A valid chat completion padded to about `size` bytes."""
    head = json.dumps({"choices": [{"message": {"content": "done"}, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    return (head[:-1] + ', "pad": "' + "x" * max(0, size - len(head) - 11) + '"}').encode()


@pytest.fixture
def limits_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), LimitsHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


HI = [[{"role": "user", "content": "hi"}]]


def test_a_trickling_server_meets_the_request_deadline(limits_server: str):
    # 100 chunks 0.3 s apart: 30 s of a body whose every read beats the 3 s read timeout.
    backend = OpenAICompatibleBackend(limits_server, "trickle-100-0.3", timeout_s=3, request_deadline_s=2,
                                      max_retries=1, backoff_s=0.01)
    started = time.monotonic()
    out = backend.generate(HI, SamplingParams())
    assert time.monotonic() - started < 15
    assert not out[0].ok and out[0].error.startswith("deadline_exceeded:")
    extra = backend.stats.extra
    assert extra["deadline_exceeded"] == 2 and extra["failed.deadline_exceeded"] == 1
    assert backend.stats.retries == 1 and extra["concurrency_decreases"] >= 1  # an overload signal, as a timeout
    assert "timeouts" not in extra


def test_a_slow_body_within_the_deadline_is_read_and_the_default_deadline_is_four_timeouts(limits_server: str):
    backend = OpenAICompatibleBackend(limits_server, "trickle-4-0.1", timeout_s=3, max_retries=0)
    assert backend.request_deadline_s == 12
    out = backend.generate(HI, SamplingParams())
    assert out[0].ok and out[0].text == "done"


@pytest.mark.parametrize("model", ["large-100000", "large-chunked-100000"])
def test_a_body_over_max_response_bytes_is_a_retryable_fault(limits_server: str, model: str):
    backend = OpenAICompatibleBackend(limits_server, model, max_response_bytes=16_384, max_retries=1,
                                      backoff_s=0.01)
    out = backend.generate(HI, SamplingParams())
    assert not out[0].ok and out[0].error.startswith("response_too_large:")
    extra = backend.stats.extra
    assert extra["response_too_large"] == 2 and extra["failed.response_too_large"] == 1
    assert backend.stats.retries == 1
    within = OpenAICompatibleBackend(limits_server, model.replace("100000", "12000"), max_response_bytes=16_384)
    assert within.generate(HI, SamplingParams())[0].text == "done"


def test_a_fast_server_still_answers_under_the_limits(limits_server: str):
    backend = OpenAICompatibleBackend(limits_server, "fast", timeout_s=3, request_deadline_s=2,
                                      max_response_bytes=4096)
    out = backend.generate(HI * 4, SamplingParams())
    assert all(g.ok and g.text == "done" for g in out)
    assert backend.stats.retries == 0 and "deadline_exceeded" not in backend.stats.extra


def test_the_config_sets_the_limits_and_the_retry_after_cap(limits_server: str):
    config = BackendConfig(kind="openai", base_url=limits_server, model="throttle", max_retries=1,
                           request_deadline_s=5, max_response_bytes=1000, max_retry_after_s=0.2)
    backend = create_backend(config)
    assert isinstance(backend, OpenAICompatibleBackend)
    assert (backend.request_deadline_s, backend.max_response_bytes, backend.max_retry_after_s) == (5, 1000, 0.2)
    started = time.monotonic()
    out = backend.generate(HI, SamplingParams())  # the server asks for an hour; the cap waits 0.2 s (+ jitter)
    assert time.monotonic() - started < 5
    assert out[0].error.startswith("http_429") and backend.stats.extra["throttled"] == 2

"""Batches complete against a misbehaving server, and count what failed.

A real llama.cpp server sits behind a loopback proxy that the tests control: it passes requests through,
or answers the first few (and always the "POISON" row) with a fault: a 429 or 5xx storm, a response
slower than the client's timeout, a reset or dropped connection, a truncated or invalid JSON body, a 200
without choices. The proxy can also come up late (a server down at start). The last tests SIGKILL a managed
llama_cpp.server in the middle of a batch and expect the batch to finish after a restart.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from fineinstructions.backends.base import SamplingParams
from fineinstructions.backends.factory import create_backend
from fineinstructions.backends.llama_server import LlamaServerBackend
from fineinstructions.backends.openai_http import OpenAICompatibleBackend, _retry_after
from fineinstructions.config import BackendConfig
from tests.conftest import TEST_MODEL, free_port

PROMPTS = ["Say the number 1.", "Name a color.", "POISON Say the number 7.", "Name a fruit.", "Say hello."]
POISON = 2
CONVERSATIONS = [[{"role": "user", "content": p}] for p in PROMPTS]
SAMPLING = SamplingParams(temperature=0.0, max_tokens=4)
MAX_CONCURRENCY = 4
# Non-poison requests that get the fault before the proxy passes requests through: the first wave of
# MAX_CONCURRENCY requests (with the poison row) fails, which opens the breaker (threshold 3).
STORM = 3
SLOW_TIMEOUT_S = 1.5


def make_backend(url: str, **options: object) -> OpenAICompatibleBackend:
    settings: dict[str, object] = dict(max_concurrency=MAX_CONCURRENCY, timeout_s=60.0, max_retries=5,
                                       backoff_s=0.05, max_backoff_s=0.4, breaker_failures=3,
                                       breaker_cooldown_s=0.2)
    return OpenAICompatibleBackend(url, TEST_MODEL, **(settings | options))  # type: ignore[arg-type]


class FaultProxy:
    """A loopback proxy in front of an OpenAI-compatible server that misbehaves on command."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self.storm = 0
        self.retry_after: str | None = None
        self.slow_s = 0.0
        self.seen: list[tuple[float, str, str]] = []  # (time, prompt, what the proxy did)
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def configure(self, mode: str, storm: int = 0, retry_after: str | None = None, slow_s: float = 0.0) -> None:
        with self.lock:
            self.mode, self.storm, self.retry_after, self.slow_s = mode, storm, retry_after, slow_s
            self.seen.clear()

    def decide(self, prompt: str) -> str:
        with self.lock:
            action = "pass"
            if self.mode != "pass" and "POISON" in prompt:
                action = self.mode
            elif self.mode != "pass" and self.storm > 0:
                self.storm -= 1
                action = self.mode
            self.seen.append((time.monotonic(), prompt, action))
            return action

    def forward(self, path: str, body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            connection.request("POST", path, body, {"content-type": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                action = proxy.decide(json.loads(body)["messages"][-1]["content"])
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (slow mode)
                    self.act(action, body)

            def act(self, action: str, body: bytes) -> None:
                if action == "pass":
                    self.reply(*proxy.forward(self.path, body))
                elif action == "429":
                    headers = {"Retry-After": proxy.retry_after} if proxy.retry_after else {}
                    self.reply(429, b'{"error": "rate limited"}', headers)
                elif action in ("500", "503"):
                    self.reply(int(action), b'{"error": "server error"}')
                elif action == "slow":
                    time.sleep(proxy.slow_s)
                    self.close_connection = True
                elif action == "reset":  # RST: linger 0, then really close the socket
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.rfile.close()
                    self.wfile.close()
                    self.connection.close()
                    self.wfile = io.BytesIO()  # http.server flushes it after do_POST
                elif action == "drop":  # FIN without a response
                    self.close_connection = True
                elif action == "truncated":
                    status, data = proxy.forward(self.path, body)
                    self.reply(status, data[: len(data) // 2])
                elif action == "invalid_json":
                    self.reply(200, b"<html><body>502 Bad Gateway</body></html>")
                elif action == "empty_choices":
                    self.reply(200, json.dumps({"id": "x", "object": "chat.completion", "choices": [],
                                                "usage": {"prompt_tokens": 1, "completion_tokens": 0}}).encode())
                else:
                    raise AssertionError(action)

            def reply(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture(scope="module")
def proxy(llama_server: str):
    fault_proxy = FaultProxy(llama_server)
    fault_proxy.start()
    yield fault_proxy
    fault_proxy.stop()


@pytest.fixture(scope="module")
def baseline(proxy: FaultProxy) -> list[str]:
    """The pass-through outputs (greedy) every faulty run must reproduce for the rows that succeed."""
    proxy.configure("pass")
    backend = make_backend(proxy.url)
    out = backend.generate(CONVERSATIONS, SAMPLING)
    assert all(g.ok and g.text for g in out), [g.error for g in out]
    assert backend.stats.retries == 0 and backend.stats.extra["attempts"] == len(PROMPTS)
    assert backend.stats.extra["breaker_opens"] == 0 and backend.stats.extra["concurrency_decreases"] == 0
    return [g.text for g in out]


@dataclass(frozen=True)
class Fault:
    mode: str
    reason: str  # what the failed row's error says
    counter: str  # the stats.extra count of these faults
    overload: bool  # the limiter should back off
    breaker: bool  # the breaker should open (and recover)
    retry_after: str | None = None


FAULTS = [
    Fault("429", "http_429", "throttled", overload=True, breaker=False, retry_after="0.3"),
    Fault("429", "http_429", "throttled", overload=True, breaker=False),
    Fault("500", "http_500", "server_errors", overload=True, breaker=True),
    Fault("503", "http_503", "server_errors", overload=True, breaker=True),
    Fault("slow", "ReadTimeout", "timeouts", overload=True, breaker=True),
    Fault("reset", "ReadError", "transport_errors", overload=True, breaker=True),
    Fault("drop", "RemoteProtocolError", "transport_errors", overload=True, breaker=True),
    Fault("truncated", "invalid_response: JSONDecodeError", "invalid_responses", overload=False, breaker=True),
    Fault("invalid_json", "invalid_response: JSONDecodeError", "invalid_responses", overload=False, breaker=True),
    Fault("empty_choices", "invalid_response: InvalidResponse: no choices", "invalid_responses", overload=False,
          breaker=True),
]


@pytest.mark.server
@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.mode + ("-retry-after" if f.retry_after else ""))
def test_batch_completes_through_fault(proxy: FaultProxy, baseline: list[str], fault: Fault):
    slow = fault.mode == "slow"  # the client times out after SLOW_TIMEOUT_S; the proxy holds a second longer
    proxy.configure(fault.mode, storm=STORM, retry_after=fault.retry_after, slow_s=SLOW_TIMEOUT_S + 1.0)
    backend = make_backend(proxy.url, **({"timeout_s": SLOW_TIMEOUT_S} if slow else {}))
    out = backend.generate(CONVERSATIONS, SAMPLING)

    assert len(out) == len(PROMPTS)
    for i, generation in enumerate(out):  # in order: every successful row is the pass-through output
        if i == POISON:
            assert not generation.ok and fault.reason in generation.error and generation.text == ""
        else:
            assert generation.ok, generation.error
            assert generation.text == baseline[i]
    stats, extra = backend.stats, backend.stats.extra
    category = fault.reason.split(":")[0]
    assert stats.failures == 1 and extra[f"failed.{category}"] == 1
    assert extra[fault.counter] >= STORM + 1 and stats.retries >= STORM + 1
    if fault.overload:
        assert extra["concurrency_decreases"] >= 1 and extra["concurrency_min"] < MAX_CONCURRENCY
    else:
        assert extra["concurrency_decreases"] == 0
    if fault.breaker:  # opened on the storm, and a probe closed it again
        assert extra["breaker_opens"] >= 1 and extra["breaker_recoveries"] >= 1
    else:  # a 429 comes from a live server: throttling is the limiter's business, not the breaker's
        assert extra["breaker_opens"] == 0
    if fault.retry_after:  # the poison row was retried no sooner than the server asked
        times = [t for t, prompt, _ in proxy.seen if "POISON" in prompt]
        assert len(times) == 6 and min(b - a for a, b in zip(times, times[1:], strict=False)) >= 0.3


@pytest.mark.server
def test_server_down_at_start_then_up(llama_server: str, baseline: list[str]):
    late = FaultProxy(llama_server)
    timer = threading.Timer(0.8, late.start)
    timer.start()
    try:
        backend = make_backend(late.url, breaker_cooldown_s=0.3)
        started = time.monotonic()
        out = backend.generate(CONVERSATIONS, SAMPLING)
        assert time.monotonic() - started >= 0.8
    finally:
        timer.join()
        late.stop()
    assert [g.text for g in out] == baseline and backend.stats.failures == 0
    extra = backend.stats.extra
    assert extra["transport_errors"] >= 3 and extra["breaker_opens"] >= 1 and extra["breaker_recoveries"] >= 1
    assert extra["breaker_rejections"] >= 1  # waited for the probe instead of hammering the closed port
    assert extra["concurrency_decreases"] == 0  # a refused connection is not an overload signal


def test_dead_server_fails_fast_without_hammering():
    backend = OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}", "m", max_concurrency=4, max_retries=3,
                                      backoff_s=0.01, breaker_failures=3, breaker_cooldown_s=0.1)
    started = time.monotonic()
    out = backend.generate([[{"role": "user", "content": str(i)}] for i in range(20)], SamplingParams())
    assert time.monotonic() - started < 5
    assert not any(g.ok for g in out) and backend.stats.failures == 20
    assert all(g.error.startswith(("ConnectError", "circuit_open")) for g in out)
    extra = backend.stats.extra
    # Without the breaker: 20 rows x 4 attempts = 80 connections; with it, the first wave and one probe per
    # cool-down.
    assert extra["attempts"] <= 20 and extra["breaker_rejections"] >= 20
    assert extra["failed.circuit_open"] + extra.get("failed.ConnectError", 0) == 20
    assert extra["breaker_open"] == 1


def test_retry_after_headers_are_read_and_capped():
    def response(**headers: str) -> httpx.Response:
        return httpx.Response(429, headers=headers)

    assert _retry_after(response(**{"retry-after": "2"})) == 2.0
    assert _retry_after(response(**{"retry-after-ms": "250", "retry-after": "1"})) == 0.25
    assert _retry_after(response(**{"retry-after": "3600"}), cap=60) == 60.0
    assert _retry_after(response(**{"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert _retry_after(response()) is None


@pytest.mark.server
def test_managed_server_restarts_after_sigkill_mid_batch():
    config = BackendConfig(kind="llamacpp_server", model=TEST_MODEL, n_ctx=1024, n_threads=1, max_retries=2,
                           max_restarts=1)
    backend = create_backend(config)
    assert isinstance(backend, LlamaServerBackend)
    conversations = [[{"role": "user", "content": f"Count from {i} to {i + 3}."}] for i in range(6)]
    sampling = SamplingParams(max_tokens=8)
    try:
        first = backend.generate(conversations, sampling)
        assert all(g.ok for g in first), [g.error for g in first]
        pid = backend.server.pid
        assert pid is not None
        sent_before = backend.http.stats.extra["attempts"]

        def kill_mid_batch() -> None:
            deadline = time.monotonic() + 60
            while backend.http.stats.extra["attempts"] < sent_before + 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_mid_batch)
        killer.start()
        second = backend.generate(conversations, sampling)
        killer.join()

        assert [g.text for g in second] == [g.text for g in first]
        assert backend.server.alive() and backend.server.pid != pid
        extra = backend.stats.extra
        assert extra["restarts"] == 1 and 1 <= extra["resent_after_restart"] <= 5
        assert backend.stats.failures == 0 and backend.stats.requests == 12
        assert backend.server.log_path.read_text().count("=== start") == 2

        # With the restart budget spent, a dead server fails its rows (counted) instead of raising.
        os.kill(backend.server.pid, signal.SIGKILL)  # type: ignore[arg-type]
        backend.server.process.wait()  # type: ignore[union-attr]
        third = backend.generate(conversations[:2], sampling)
        assert [g.error.split(":")[0] for g in third] == ["engine_dead", "engine_dead"]
        assert backend.stats.extra["failed.engine_dead"] == 2 and backend.stats.extra["restarts"] == 1
        assert backend.count_tokens(["Hello world", ""])[1] == 0 and backend.count_tokens(["Hello world"])[0] >= 2
    finally:
        process = backend.server.process
        backend.close()
    assert process is None or process.poll() is not None


@pytest.mark.server
def test_whole_pipeline_through_a_503_storm_completes_and_counts_it(proxy: FaultProxy, tmp_path):
    from fineinstructions.config import BackendConfig
    from fineinstructions.pipeline import Pipeline
    from tests.test_pipeline import config_for

    cfg = config_for(tmp_path, shard_size=4, top_k=1)
    cfg.generator = BackendConfig(kind="openai", base_url=proxy.url, model=TEST_MODEL, max_concurrency=2,
                                  timeout_s=60, max_retries=6)
    cfg.templatize.max_tokens = 60
    cfg.instantiate.max_tokens = 80
    cfg.judge.max_tokens = 40
    proxy.configure("503", storm=6)  # the first six requests of the run meet a dying server
    summary = Pipeline(cfg, show_progress=False).run()
    templatize = summary["stages"]["templatize"]
    assert templatize["rows_in"] == 6 and templatize["failed_requests"] == 0  # every row got through
    assert templatize["backend"]["server_errors"] >= 6 and templatize["backend"]["retries"] >= 6
    assert templatize["backend"]["cache_misses"] >= 6
    assert "backend_error" not in summary["stages"]["instantiate"]["dropped"]

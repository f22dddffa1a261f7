"""An engine outage loses nothing: requests that failed through the engine are retried by the next run (and
only they reach the engine again), the summary counts what remains, and the command exits non-zero."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fineinstructions.cli import app
from fineinstructions.config import BackendConfig
from fineinstructions.pipeline import Pipeline
from tests.conftest import free_port
from tests.test_pipeline import config_for, dataset_rows, scripted

PROMPT_PREFIX = {"templatize": "You turn a real user query", "instantiate": ("You write one", "You turn an instruc"),
                 "judge": "You are a strict judge"}


class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 answering with the scripted model; `down` names the stages
    whose requests get a 503 (an outage), `calls` counts the requests that reached it per stage."""

    def __init__(self, respond: Callable[[list[dict[str, str]]], str] = scripted) -> None:
        self.down: set[str] = set()
        self.calls: dict[str, int] = {stage: 0 for stage in PROMPT_PREFIX}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messages = body["messages"]
                stage = next(s for s, p in PROMPT_PREFIX.items() if messages[0]["content"].startswith(p))
                server.calls[stage] += 1
                if stage in server.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                text = respond(messages)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                                   "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def reset_calls(self) -> None:
        self.calls = dict.fromkeys(self.calls, 0)


@pytest.fixture()
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.httpd.shutdown()


def http_config(tmp_path: Path, server: ScriptedServer, out: str = "run"):
    cfg = config_for(tmp_path, out=out)
    cfg.generator = BackendConfig(kind="openai", base_url=server.url, model="scripted", max_retries=0,
                                  timeout_s=5, max_concurrency=2)
    return cfg


@pytest.mark.parametrize("stage", ["instantiate", "judge", "templatize"])
def test_an_outage_in_a_stage_is_retried_by_the_next_run_and_only_its_requests(tmp_path, server, stage):
    reference = http_config(tmp_path, server, out="reference")
    Pipeline(reference, show_progress=False).run()
    expected = dataset_rows(reference)
    reference_calls = dict(server.calls)
    assert expected

    server.reset_calls()
    server.down = {stage}
    cfg = http_config(tmp_path, server)
    first = Pipeline(cfg, show_progress=False).run()
    failed = first["unresolved_engine_failures"]
    assert failed > 0 and first["stages"][stage]["engine_failures"] == failed
    assert dataset_rows(cfg) != expected

    server.down = set()
    server.reset_calls()
    second = Pipeline(cfg, show_progress=False).run()
    assert second["unresolved_engine_failures"] == 0
    assert dataset_rows(cfg) == expected  # nothing lost: the same dataset as a run without the outage
    # Only the failed requests reached the engine again (templatize: every query failed, and the stage's own
    # retries of invalid templates follow, so exactly the calls of a run without the outage).
    assert server.calls[stage] == (reference_calls[stage] if stage == "templatize" else failed)
    order = list(PROMPT_PREFIX)
    assert all(server.calls[s] == 0 for s in order[: order.index(stage)])  # upstream: all from the cache
    # (downstream stages see new rows, so their requests for those rows are first requests, not retries)

    server.reset_calls()
    third = Pipeline(cfg, show_progress=False).run()
    assert third["unresolved_engine_failures"] == 0 and sum(server.calls.values()) == 0
    assert dataset_rows(cfg) == expected


def test_a_run_that_ends_with_engine_failures_exits_non_zero_and_a_rerun_recovers(tmp_path, server):
    cfg = http_config(tmp_path, server)
    path = tmp_path / "http.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    server.down = {"instantiate"}
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--quiet"])
    assert result.exit_code != 0
    assert "failed through the engine" in result.output and "rerun the same command" in result.output
    server.down = set()
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--quiet"])
    assert result.exit_code == 0, result.output


def test_retrying_can_be_turned_off_and_row_caused_failures_are_not_retried(tmp_path, server):
    cfg = http_config(tmp_path, server)
    cfg.run.retry_engine_failures = False
    server.down = {"judge"}
    assert Pipeline(cfg, show_progress=False).run()["unresolved_engine_failures"] > 0
    server.down = set()
    server.reset_calls()
    Pipeline(cfg, show_progress=False).run()
    assert sum(server.calls.values()) == 0  # committed shards are kept as they are

    from fineinstructions.backends.base import is_engine_failure

    assert is_engine_failure("http_503: busy") and is_engine_failure("circuit_open: 5 consecutive failures")
    assert is_engine_failure("ReadTimeout: timed out") and is_engine_failure("engine_dead: gone")
    assert not is_engine_failure("http_400: context length exceeded")
    assert not is_engine_failure("engine_error: prompt of 9000 tokens does not fit max_model_len 4096")
    assert not is_engine_failure("prompt_too_long: 5000 tokens") and not is_engine_failure(None)

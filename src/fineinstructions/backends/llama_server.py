"""llama.cpp as a separate server process: a crashed engine is restarted instead of ending the run.

`ManagedLlamaServer` runs `python -m llama_cpp.server` for a GGUF on 127.0.0.1 (a free port, a health check
on /v1/models, output in a log file). `LlamaServerBackend` sends its requests through
`OpenAICompatibleBackend`; when the server process has died, the requests it lost fail at once, the server
is started again (at most `max_restarts` times in the backend's life) and those requests are sent again.
Structured outputs go in llama.cpp's dialect (`send_grammar`): a GBNF grammar as `grammar`, a JSON schema as
`response_format: {"type": "json_object", "schema": ...}` (and llama-server's own `json_schema` field).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import httpx

from fineinstructions.backends.base import BackendStats, Conversation, Generation, SamplingParams
from fineinstructions.backends.models import resolve_gguf
from fineinstructions.backends.openai_http import OpenAICompatibleBackend
from fineinstructions.errors import FineInstructionsError

log = logging.getLogger(__name__)


class ServerStartError(FineInstructionsError):
    """The server process exited or did not answer its health check in time."""


class ManagedLlamaServer:
    """One `llama_cpp.server` child process serving a GGUF on 127.0.0.1."""

    def __init__(self, model_path: str | Path, alias: str, n_ctx: int = 4096, n_threads: int | None = None,
                 log_path: str | Path | None = None, startup_timeout_s: float = 120.0,
                 extra_args: Sequence[str] = ()):
        self.model_path = Path(model_path)
        self.alias = alias
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(handle)
            log_path = name
        self.log_path = Path(log_path)
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        """The OpenAI base URL (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        """True while the server process runs (it may still be loading)."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process on a free port and wait until /v1/models answers; ServerStartError otherwise."""
        self.stop()
        self.port = _free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
               "--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", str(self.n_ctx), "--n_threads", str(self.n_threads),
               "--n_threads_batch", str(self.n_threads), *self.extra_args]
        with self.log_path.open("a") as handle:
            handle.write(f"\n=== start {self.starts + 1}: {' '.join(cmd)}\n")
            handle.flush()
            self.process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1
        # Never leave an orphaned server behind when the owner is collected or the interpreter exits.
        self._finalizer = weakref.finalize(self, _terminate, self.process)
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self.process.poll() is not None:
                raise ServerStartError(f"llama_cpp.server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"llama_cpp.server did not answer in {self.startup_timeout_s:.0f} s:\n"
                                       f"{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate the process (kill it if it does not exit within 10 s)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.process = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> ManagedLlamaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LlamaServerBackend:
    """A local GGUF served by a managed `llama_cpp.server`, restarted when it dies (kind "llamacpp_server")."""

    def __init__(self, model: str, n_ctx: int = 4096, n_threads: int | None = None, max_concurrency: int = 2,
                 timeout_s: float = 120.0, max_retries: int = 4, max_restarts: int = 3,
                 log_path: str | Path | None = None, startup_timeout_s: float = 120.0, **http_options: object):
        """`max_concurrency`: requests in flight; the server runs one at a time, so more only queue (and their
        queueing counts against `timeout_s`). `http_options` go to OpenAICompatibleBackend (backoff, breaker)."""
        self.path = resolve_gguf(model)
        self.model_id = model if not Path(model).suffix else self.path.name
        self.max_restarts = max_restarts
        self.restarts = 0
        self.server = ManagedLlamaServer(self.path, self.model_id, n_ctx=n_ctx, n_threads=n_threads,
                                         log_path=log_path, startup_timeout_s=startup_timeout_s)
        self.server.start()
        self.http = OpenAICompatibleBackend(self.server.url, self.model_id, api_key="",
                                            max_concurrency=max_concurrency, timeout_s=timeout_s,
                                            max_retries=max_retries, send_grammar=True,
                                            engine_alive=self.server.alive, **http_options)  # type: ignore[arg-type]
        self.stats = BackendStats()
        self._resent = 0
        self._failed: Counter[str] = Counter()
        self._tokenizer: object | None = None

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        """Generate through the server; rows lost to a dead server are sent again after a restart."""
        start = time.perf_counter()
        down = "engine_dead: llama_cpp.server is down and its restart budget is spent"
        out = [Generation("", error=down) for _ in conversations]
        pending = list(range(len(conversations)))
        while pending:
            if not self.server.alive() and not self._restart():
                break
            results = self.http.generate([conversations[i] for i in pending], sampling)
            for i, generation in zip(pending, results, strict=True):
                out[i] = generation
            failed = [i for i in pending if not out[i].ok]
            if not failed or self.server.alive():
                break  # whatever failed, failed on a live server: the HTTP client already retried it
            log.warning("llama_cpp.server died (exit %s); %d of %d requests to send again; log: %s",
                        self.server.process.returncode if self.server.process else None, len(failed),
                        len(conversations), self.server.log_path)
            self._resent += len(failed)
            pending = failed
        self.stats.add(out, time.perf_counter() - start)
        self.stats.retries = self.http.stats.retries + self._resent
        # Failures by reason count final outcomes only, not the requests that a restart then rescued.
        self._failed.update("failed." + g.error.split(":", 1)[0].split(" ", 1)[0] for g in out if g.error)
        extra = {k: v for k, v in self.http.stats.extra.items() if not k.startswith("failed.")}
        self.stats.extra = extra | {k: float(v) for k, v in self._failed.items()} | {
            "restarts": float(self.restarts), "resent_after_restart": float(self._resent)}
        return out

    def _restart(self) -> bool:
        """Start the server again if the restart budget allows; False when it does not or the start fails."""
        while self.restarts < self.max_restarts:
            self.restarts += 1
            log.warning("restarting llama_cpp.server (%d of at most %d)", self.restarts, self.max_restarts)
            try:
                self.server.start()
            except ServerStartError as err:
                log.error("%s", err)
                continue
            self.http.base_url = self.server.url
            self.http.breaker.reset()  # the failures were the old process's
            return True
        return False

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Exact counts from the model's own tokenizer (loaded in-process, vocabulary only)."""
        if self._tokenizer is None:
            from llama_cpp import Llama

            self._tokenizer = Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        tokenizer = self._tokenizer
        return [len(tokenizer.tokenize(t.encode("utf-8"), add_bos=False, special=False)) if t else 0  # type: ignore[attr-defined]
                for t in texts]

    def close(self) -> None:
        self.server.stop()
        if self._tokenizer is not None:
            self._tokenizer.close()  # type: ignore[attr-defined]
            self._tokenizer = None


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


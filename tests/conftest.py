"""Shared fixtures: the real 135M GGUF model, the packaged embedder, a real llama.cpp server on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `kind: auto` (the default backend) runs llama.cpp in the suite, so a test's engine does not depend on whether this
# machine has vLLM and AVX-512; the vLLM tests name `kind: vllm`, and tests/backends/test_auto.py checks the choice.
os.environ.setdefault("FINEINSTRUCTIONS_ENGINE", "llamacpp")

TEST_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def test_gguf() -> Path:
    from fineinstructions.backends.models import resolve_gguf

    return resolve_gguf(TEST_MODEL)


@pytest.fixture(scope="session")
def llama_backend(test_gguf: Path):
    from fineinstructions.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(str(test_gguf), n_ctx=4096)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def embedder():
    from fineinstructions.backends.embeddings import Embedder

    return Embedder()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(test_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `llama_cpp.server` (OpenAI-compatible) serving the test model on 127.0.0.1."""
    from fineinstructions.backends.llama_server import ManagedLlamaServer

    server = ManagedLlamaServer(test_gguf, TEST_MODEL, n_ctx=4096, n_threads=2,
                                log_path=tmp_path_factory.mktemp("server") / "server.log")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()

from __future__ import annotations

import dataclasses

import pytest

from fineinstructions.backends.models import (
    REGISTRY,
    ModelFetchError,
    ModelNotFound,
    assemble,
    resolve_embedder,
    resolve_gguf,
)


def test_local_gguf_path_is_accepted_and_missing_path_is_clear(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_gguf(str(path)) == path
    with pytest.raises(ModelNotFound, match="not found"):
        resolve_gguf(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFound, match="unknown model"):
        resolve_gguf("no-such-model")


@pytest.mark.model
def test_packaged_model_is_assembled_once_and_verified(test_gguf):
    assert test_gguf.stat().st_size == REGISTRY["smollm2-135m-instruct"].size
    assert test_gguf.read_bytes()[:4] == b"GGUF"
    assert resolve_gguf("smollm2-135m-instruct", download=False) == test_gguf


@pytest.mark.model
def test_checksum_mismatch_leaves_nothing_behind(tmp_path):
    wrong = dataclasses.replace(REGISTRY["smollm2-135m-instruct"], sha256="0" * 64)
    target = tmp_path / "models" / wrong.filename
    with pytest.raises(ModelFetchError, match="sha256"):
        assemble(wrong, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_packaged_embedder_resolves_to_a_local_folder():
    assert resolve_embedder("all-minilm-l6-v2").endswith("model")
    assert resolve_embedder("/some/local/path") == "/some/local/path"

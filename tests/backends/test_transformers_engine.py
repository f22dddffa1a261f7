"""TransformersBackend on real models: the converted SmolLM2-135M folder and a tiny random Llama whose tokenizer
was trained from scratch (the shape of the models `train` and `distill` write)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineinstructions.backends.base import SamplingParams
from fineinstructions.errors import ConfigError
from tests.evaluation.tiny import make_tiny_llama

torch = pytest.importorskip("torch")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    # One thread: on a shared CPU, two torch threads wait on each other and run 10-40x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def smol(test_gguf: Path):
    from fineinstructions.backends.convert import resolve_hf_folder
    from fineinstructions.backends.transformers_engine import TransformersBackend

    backend = TransformersBackend(str(resolve_hf_folder("smollm2-135m-instruct")), batch_size=4)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from fineinstructions.backends.transformers_engine import TransformersBackend

    folder = make_tiny_llama(tmp_path_factory.mktemp("tiny") / "chat", seed=0)
    backend = TransformersBackend(str(folder), batch_size=4)
    yield backend
    backend.close()


def test_smollm2_generates_with_its_chat_template(smol):
    assert smol.prompt_format == "chat" and smol.device.type in ("cpu", "cuda")
    before = smol.stats.requests
    out = smol.generate([QUESTION, [{"role": "user", "content": "Say hello."}]], SamplingParams(max_tokens=12))
    assert len(out) == 2 and all(g.ok and g.text.strip() for g in out)
    assert "Paris" in out[0].text
    assert all(g.prompt_tokens > 10 and 0 < g.completion_tokens <= 12 for g in out)
    assert smol.stats.requests == before + 2 and smol.stats.completion_tokens >= sum(g.completion_tokens for g in out)
    assert smol.count_tokens(["Paris", ""]) == [1, 0]


def test_smollm2_log_likelihood_prefers_a_sensible_completion(smol):
    sensible, shuffled = "The capital of France is Paris.", "Paris the France capital is of The."
    (good, n_good), (bad, n_bad) = smol.log_likelihood([QUESTION, QUESTION], [sensible, shuffled])
    assert n_good == len(smol.tokenizer(sensible, add_special_tokens=False)["input_ids"])
    assert good / n_good > bad / n_bad + 1.0
    # batching and padding do not change a score
    alone = smol.log_likelihood([QUESTION], [sensible])[0]
    assert alone[1] == n_good and alone[0] == pytest.approx(good, abs=1e-3)
    assert smol.log_likelihood([QUESTION], [""]) == [(0.0, 0)]
    with pytest.raises(ValueError, match="completions"):
        smol.log_likelihood([QUESTION], [])


def test_tiny_llama_with_a_from_scratch_tokenizer(tiny):
    assert tiny.prompt_format == "chat"  # from fineinstructions-model.json
    assert tiny.render(QUESTION) == "<|user|>\nWhat is the capital of France?\n<|assistant|>\n"
    short, long = [{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Water boils at one hundred " * 4}]
    greedy = SamplingParams(max_tokens=8)
    batch = tiny.generate([short, long], greedy)
    assert [g.completion_tokens for g in batch] == [8, 8] and all(g.finish_reason == "length" for g in batch)
    # left padding: a short prompt completes the same alone as beside a long one
    assert tiny.generate([short], greedy)[0].text == batch[0].text
    sampled = SamplingParams(max_tokens=8, temperature=1.0, seed=7)
    assert tiny.generate([short], sampled)[0].text == tiny.generate([short], sampled)[0].text


def test_tiny_llama_stop_strings_and_log_likelihood_accounting(tiny):
    text = tiny.generate([QUESTION], SamplingParams(max_tokens=16))[0].text
    stop = next((c for c in text[2:] if c.strip()), None)
    if stop is not None:
        cut = tiny.generate([QUESTION], SamplingParams(max_tokens=16, stop=(stop,)))[0].text
        assert stop not in cut and text.startswith(cut)
    completion = "Plants use sunlight and water."
    (total, count), = tiny.log_likelihood([QUESTION], [completion])
    ids = tiny.tokenizer(tiny.render(QUESTION) + completion, add_special_tokens=False)["input_ids"]
    n = len(tiny.tokenizer(completion, add_special_tokens=False)["input_ids"])
    assert count == n
    with torch.no_grad():  # the same sum from one unbatched forward pass
        logprobs = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0].float(), -1)
    expected = sum(float(logprobs[p - 1, ids[p]]) for p in range(len(ids) - n, len(ids)))
    assert total == pytest.approx(expected, abs=1e-4)
    assert tiny.stats.extra["ll_boundary_merges"] == 0


def test_plain_format_factory_and_prompt_limits(tmp_path: Path):
    from fineinstructions.backends.factory import create_backend
    from fineinstructions.backends.transformers_engine import TransformersBackend
    from fineinstructions.config import BackendConfig

    folder = make_tiny_llama(tmp_path / "plain", seed=1, prompt_format="plain", trained_on="documents")
    backend = create_backend(BackendConfig(kind="transformers", model=str(folder), n_ctx=64, max_concurrency=2))
    try:
        assert isinstance(backend, TransformersBackend) and backend.prompt_format == "plain"
        assert backend.max_length == 64 and backend.batch_size == 2
        conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        assert backend.render(conversation) == "Be brief.\n\nHi\n\n"
        too_long = [{"role": "user", "content": "word " * 80}]
        out = backend.generate([conversation, too_long], SamplingParams(max_tokens=4))
        assert out[0].ok and out[0].completion_tokens == 4
        assert not out[1].ok and "prompt_too_long" in (out[1].error or "")
        assert backend.stats.failures == 1
    finally:
        backend.close()
    meta = json.loads((folder / "fineinstructions-model.json").read_text())
    assert meta["prompt_format"] == "plain"
    forced = TransformersBackend(str(folder), prompt_format="chat")
    assert forced.prompt_format == "chat"
    forced.close()


def test_folders_that_are_not_causal_lms_are_clear_errors(tmp_path: Path):
    from transformers import BertConfig

    from fineinstructions.backends.transformers_engine import NotACausalLM, TransformersBackend

    with pytest.raises(NotACausalLM, match="not found"):
        TransformersBackend(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACausalLM, match="no config.json"):
        TransformersBackend(str(tmp_path / "empty"))
    bert = tmp_path / "bert"
    BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               architectures=["BertForMaskedLM"]).save_pretrained(bert)
    with pytest.raises(NotACausalLM, match="not a causal language model"):
        TransformersBackend(str(bert))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            TransformersBackend(str(bert), device="cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        TransformersBackend(str(bert), device="tpu-please")
    with pytest.raises(ConfigError, match="prompt_format"):
        from fineinstructions.backends.transformers_engine import resolve_prompt_format

        resolve_prompt_format("markdown", {}, True)


def test_the_instruction_frame_of_models_trained_on_raw_text(tmp_path):
    from fineinstructions.backends.transformers_engine import TransformersBackend

    framed = TransformersBackend(str(make_tiny_llama(tmp_path / "m", seed=0)), prompt_format="instruction",
                                 batch_size=4)
    try:
        assert framed.render(QUESTION) == "Instruction: What is the capital of France?\n\nAnswer:"
        text = framed.generate([QUESTION], SamplingParams(max_tokens=8))[0].text
        assert text == text.lstrip()  # the space after "Answer:" is the frame's, not the answer's
        # the reference is scored as it was trained: after "Answer:" and a space
        (total, count), = framed.log_likelihood([QUESTION], ["Paris."])
        ids = framed.tokenizer(framed.render(QUESTION) + " Paris.", add_special_tokens=False)["input_ids"]
        assert count == len(ids) - len(framed.tokenizer(framed.render(QUESTION), add_special_tokens=False)[
            "input_ids"]) and total < 0
    finally:
        framed.close()

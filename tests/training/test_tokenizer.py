"""The from-scratch tokenizer: special tokens, chat template, save/load round trip; existing tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from fineinstructions.io.sources import wikipedia_documents
from fineinstructions.training.tokenizer import (
    ASSISTANT,
    CHAT_TEMPLATE,
    EOS,
    USER,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sha,
    train_bpe_tokenizer,
)

MESSAGES = [{"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris is the capital of France."}]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [d.text for _, d in zip(range(200), wikipedia_documents(), strict=False)]


@pytest.fixture(scope="module")
def tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(texts, vocab_size=1024)


def test_special_tokens_and_chat_template(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(tokenizer) == 1024
    assert tokenizer.eos_token == EOS and tokenizer.pad_token == EOS
    for token in (EOS, USER, ASSISTANT):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False) == (
        "<|user|>\nWhat is the capital of France?\n<|assistant|>\nParis is the capital of France.\n")
    assert tokenizer.apply_chat_template(MESSAGES[:1], tokenize=False, add_generation_prompt=True) == (
        "<|user|>\nWhat is the capital of France?\n<|assistant|>\n")


def test_round_trip_through_a_saved_folder(tokenizer: PreTrainedTokenizerFast, tmp_path: Path,
                                           texts: list[str]) -> None:
    save_tokenizer(tokenizer, tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tokenizer_sha(loaded) == tokenizer_sha(tokenizer)
    assert loaded.apply_chat_template(MESSAGES, tokenize=False) == tokenizer.apply_chat_template(MESSAGES,
                                                                                                tokenize=False)
    text = texts[0] + EOS
    ids = loaded.encode(text, add_special_tokens=False)
    assert loaded.decode(ids) == text  # byte-level: lossless
    assert ids[-1] == loaded.eos_token_id


def test_sha_changes_with_the_vocabulary(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> None:
    other = train_bpe_tokenizer(texts, vocab_size=800)
    assert tokenizer_sha(other) != tokenizer_sha(tokenizer)
    assert tokenizer_sha(train_bpe_tokenizer(texts, vocab_size=1024)) == tokenizer_sha(tokenizer)


def test_existing_tokenizer_without_template_gets_ours(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tokenizer = train_bpe_tokenizer(["some text to learn from"] * 5, vocab_size=300)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "plain")
    (tmp_path / "plain" / "chat_template.jinja").unlink(missing_ok=True)
    loaded = load_tokenizer(str(tmp_path / "plain"))
    assert loaded.chat_template == CHAT_TEMPLATE


def test_tokenizer_without_eos_is_refused(tmp_path: Path) -> None:
    base = train_bpe_tokenizer(["some text to learn from"] * 5, vocab_size=300)
    no_eos = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer)
    no_eos.save_pretrained(tmp_path / "noeos")
    with pytest.raises(TokenizerError, match="no eos token"):
        load_tokenizer(str(tmp_path / "noeos"))


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        load_tokenizer(str(tmp_path / "nowhere" / "tok"))

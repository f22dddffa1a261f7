"""Reading pairs, the held-out split, loss masks and token-matched packing of the two arms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import PreTrainedTokenizerFast

from fineinstructions.training.data import (
    ArmSpec,
    InsufficientData,
    PairRow,
    TextRow,
    TrainDataError,
    build_arms,
    encode_documents,
    encode_pairs,
    heldout_ids,
    match_arms,
    pack,
    read_arm,
    read_documents,
    read_pairs,
    read_texts,
    split_heldout,
    tokenizer_texts,
    unique_documents,
)
from fineinstructions.training.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def pairs(pair_dataset: Path) -> list[PairRow]:
    return read_pairs(pair_dataset)


@pytest.fixture(scope="module")
def tokenizer(pairs: list[PairRow]) -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(tokenizer_texts(pairs), vocab_size=1024)


def test_read_pairs_from_a_run_folder_its_dataset_or_a_file(pair_dataset: Path, pairs: list[PairRow]) -> None:
    assert len(pairs) == 60 and len({p.document_id for p in pairs}) == 30
    assert read_pairs(pair_dataset / "dataset") == pairs
    assert read_pairs(pair_dataset / "dataset" / "part-00000.parquet") == pairs
    assert read_pairs([pair_dataset, pair_dataset / "dataset"]) == pairs + pairs  # several runs are pooled


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainDataError, match="does not exist"):
        read_pairs(tmp_path / "missing")
    with pytest.raises(TrainDataError, match="no source given"):
        read_pairs([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainDataError, match="no Parquet files"):
        read_pairs(tmp_path / "empty")
    pq.write_table(pa.table({"document_id": ["d"], "text": ["t"], "instantiated_instruction": ["q"]}),
                   tmp_path / "cols.parquet")
    with pytest.raises(TrainDataError, match="lacks the column.*answer"):
        read_pairs(tmp_path / "cols.parquet")
    pq.write_table(pa.table({"document_id": ["d"], "text": ["t"], "instantiated_instruction": [""], "answer": ["a"]}),
                   tmp_path / "blank.parquet")
    with pytest.raises(TrainDataError, match="no pairs"):
        read_pairs(tmp_path / "blank.parquet")


def test_heldout_split_is_by_document_and_deterministic(pairs: list[PairRow]) -> None:
    split = split_heldout(pairs, fraction=0.2)
    held = set(split.heldout_ids)
    assert held and {p.document_id for p in split.heldout} == held
    assert not held & {p.document_id for p in split.train}
    assert len(split.train) + len(split.heldout) == len(pairs)
    assert split_heldout(list(reversed(pairs)), fraction=0.2).heldout_ids == split.heldout_ids
    exact = split_heldout(pairs, documents=5)
    assert len(exact.heldout_ids) == 5
    assert set(split_heldout(pairs, documents=2).heldout_ids) <= set(exact.heldout_ids)  # nested: same hash order
    with pytest.raises(TrainDataError, match="at least one must remain"):
        split_heldout(pairs, documents=30)


def test_mask_covers_the_instruction_only(tokenizer: PreTrainedTokenizerFast, pairs: list[PairRow]) -> None:
    pair = pairs[0]
    (ids, mask), = encode_pairs(tokenizer, [pair], mask_instructions=True)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": pair.instruction}], tokenize=False,
                                           add_generation_prompt=True)
    assert tokenizer.decode(ids[~mask]) == prompt
    assert tokenizer.decode(ids[mask]) == pair.answer + "\n" + tokenizer.eos_token
    assert mask[-1] and ids[-1] == tokenizer.eos_token_id
    assert not mask[0] and mask.sum() < len(mask)
    (same_ids, full_mask), = encode_pairs(tokenizer, [pair], mask_instructions=False)
    assert np.array_equal(same_ids, ids) and full_mask.all()


def test_pairs_in_the_papers_instruction_frame(tokenizer: PreTrainedTokenizerFast, pairs: list[PairRow]) -> None:
    pair = pairs[0]
    (ids, mask), = encode_pairs(tokenizer, [pair], mask_instructions=True, pair_format="instruction")
    assert tokenizer.decode(ids[~mask]) == f"Instruction: {pair.instruction}\n\nAnswer:"
    assert tokenizer.decode(ids[mask]) == f" {pair.answer}{tokenizer.eos_token}"
    assert tokenizer.decode(ids) == f"Instruction: {pair.instruction}\n\nAnswer: {pair.answer}{tokenizer.eos_token}"
    with pytest.raises(TrainDataError, match="pair format"):
        encode_pairs(tokenizer, [pair], pair_format="essay")


def test_texts_and_documents_of_runs_and_files(pair_dataset: Path, pairs: list[PairRow], tmp_path: Path) -> None:
    part = tmp_path / "recipe" / "dataset" / "rank-00001" / "part-000000.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.table({"document_id": ["d1", "d2", None], "text": ["one", "", "three"]}), part)
    assert read_texts(tmp_path / "recipe") == [TextRow("d1", "one")]  # empty texts and missing ids are skipped
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(TrainDataError, match="document_id"):
        read_texts(tmp_path / "bad.parquet")
    jsonl = tmp_path / "documents.jsonl"
    jsonl.write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n')
    assert read_documents(jsonl) == [TextRow("a", "alpha"), TextRow("b", "beta")]
    from_pairs = read_documents(pair_dataset)  # a folder of pairs alone: their documents, each once
    assert len(from_pairs) == 30 and from_pairs[0] == TextRow(pairs[0].document_id, pairs[0].text)
    assert read_arm(ArmSpec("w", "texts", (str(tmp_path / "recipe"),))) == [TextRow("d1", "one")]
    assert heldout_ids({"a", "b"}, 0.0) == set()


def test_documents_end_with_eos_and_train_on_everything(tokenizer: PreTrainedTokenizerFast,
                                                        pairs: list[PairRow]) -> None:
    docs = unique_documents(pairs)
    assert len(docs) == 30
    encoded = encode_documents(tokenizer, [text for _, text in docs])
    for (ids, mask), (_, text) in zip(encoded, docs, strict=True):
        assert ids[-1] == tokenizer.eos_token_id and mask.all()
        assert tokenizer.decode(ids[:-1]) == text


def test_arms_are_token_matched(tokenizer: PreTrainedTokenizerFast, pairs: list[PairRow]) -> None:
    arms = build_arms(tokenizer, pairs, seq_len=32, seed=0, mask_instructions=True, eval_fraction=0.05)
    a, b = arms["pairs"], arms["documents"]
    smallest = min(a.tokens_available, b.tokens_available)
    assert len(a.train) == len(b.train)
    assert a.train.num_tokens == b.train.num_tokens == len(a.train) * 32
    assert len(a.eval) == len(b.eval) == max(1, int(np.ceil(0.05 * (smallest // 32))))
    assert len(a.train) == min(smallest // 32, a.blocks_available - len(a.eval), b.blocks_available - len(b.eval))
    assert a.train.num_loss_tokens < a.train.num_tokens - len(a.train)  # instructions masked
    assert b.train.num_loss_tokens == b.train.num_tokens - len(b.train)  # only each block's first token
    # an explicit budget gives exactly tokens // seq_len blocks in both arms
    exact = build_arms(tokenizer, pairs, seq_len=32, seed=0, tokens=1000)
    assert len(exact["pairs"].train) == len(exact["documents"].train) == 1000 // 32


def test_packing_shuffles_with_the_seed_and_drops_the_remainder() -> None:
    examples = [(np.arange(k * 10, k * 10 + 7, dtype=np.int32), np.ones(7, bool)) for k in range(10)]
    packed = pack(examples, seq_len=8, seed=1)
    assert packed.input_ids.shape == (70 // 8, 8)
    assert np.array_equal(pack(examples, 8, seed=1).input_ids, packed.input_ids)
    assert not np.array_equal(pack(examples, 8, seed=2).input_ids, packed.input_ids)
    order = np.random.default_rng(1).permutation(10)
    assert np.array_equal(packed.input_ids.ravel(), np.concatenate([examples[i][0] for i in order])[:64])


def test_insufficient_data_says_what_each_arm_has_and_what_to_do() -> None:
    encoded = {"pairs": [(np.ones(300, np.int32), np.ones(300, bool))],
               "documents": [(np.ones(1000, np.int32), np.ones(1000, bool))]}
    with pytest.raises(InsufficientData) as err:
        match_arms(encoded, seq_len=10, seed=0, tokens=500)
    message = str(err.value)
    assert "pairs: 300 tokens" in message and "documents: 1,000 tokens" in message
    assert "Lower --tokens to at most" in message and "pairs has fewer" in message
    arms = match_arms(encoded, seq_len=10, seed=0, tokens=200)
    assert len(arms["pairs"].train) == len(arms["documents"].train) == 20

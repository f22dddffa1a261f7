"""The structured-outputs benchmark at toy size: 4 real ShareGPT queries through templatize with and without
the prompt's JSON schema on llama.cpp with the 135M test model."""

from __future__ import annotations

import pytest
from benchmarks.structured_outputs import main, sharegpt_queries

from tests.conftest import TEST_MODEL


def test_the_query_sample_is_seeded_and_filtered():
    first = sharegpt_queries(4, seed=0)
    assert len(first) == 4 and len({q.query_id for q in first}) == 4
    assert [q.query_id for q in sharegpt_queries(4, seed=0)] == [q.query_id for q in first]
    assert all(q.source == "sharegpt" and q.text.strip() for q in first)


@pytest.mark.model
def test_both_passes_run_on_the_same_queries_and_print_side_by_side(test_gguf, capsys):
    passes = main(["--queries", "4", "--model", TEST_MODEL, "--max-tokens", "24", "--retries", "0"])
    assert [p.name for p in passes] == ["unconstrained", "structured"]
    for p in passes:
        assert p.queries == 4 and p.requests == 4 and p.valid + sum(p.dropped.values()) == 4
        assert 0 < p.completion_tokens <= 4 * 24 and p.seconds > 0 and p.rate > 0
    out = capsys.readouterr().out
    assert "valid templates" in out and "completion tokens/s" in out and "structured" in out

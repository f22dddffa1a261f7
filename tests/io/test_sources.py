from __future__ import annotations

from fineinstructions.io.sources import (
    demo_documents,
    demo_queries,
    is_information_seeking,
    iter_json_array,
    sharegpt_queries,
)


def test_truncated_json_array_yields_complete_objects_only():
    text = '[\n {"a": 1},\n {"a": 2},\n {"a": 3, "b": "cut of'
    assert list(iter_json_array(text)) == [{"a": 1}, {"a": 2}]
    assert list(iter_json_array('[{"a": 1}]')) == [{"a": 1}]


def test_packaged_sharegpt_gives_first_user_turns():
    queries = []
    for q in sharegpt_queries():
        queries.append(q)
        if len(queries) == 200:
            break
    assert len(queries) == 200
    assert all(q.query_id.startswith("sharegpt-") and q.text.strip() for q in queries)
    assert len({q.query_id for q in queries}) == 200


def test_demo_samples_are_seeded_and_real():
    assert [q.text for q in demo_queries(5, seed=1)] == [q.text for q in demo_queries(5, seed=1)]
    assert all(is_information_seeking(q.text) for q in demo_queries(20, seed=0))
    docs = demo_documents(4, seed=0)
    assert len(docs) == 4 and all(500 <= len(d.text) <= 1500 and d.source == "wikipedia" for d in docs)


def test_information_seeking_filter():
    assert is_information_seeking("What is acid rain and what are its causes?")
    assert not is_information_seeking("Write me a poem about the sea")
    assert not is_information_seeking("What does this code do? `x = 1`")

"""The executor interface: one verb over a spec; committed shards are read back without building the stage
(no engine loads on a finished resume); a sequential stage carries its state across shards, read back or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.config import stage_config
from fineinstructions.executors.base import Executor
from fineinstructions.executors.local import LocalExecutor
from fineinstructions.records import Document, Pair, Query, Template
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import StageSpec


def pair(document: str, answer: str = "An answer of enough words.") -> Pair:
    return Pair(document_id=document, template_id="t1", text="a b c " * 20, template="t",
                instantiated_instruction="What is it?", answer=answer, excerpt_coverage=1.0, judge_score=5,
                token_count=100, synthetic_token_count=10)


def executor(tmp_path: Path, engines=None) -> tuple[LocalExecutor, StageSpec, StageSpec]:
    cfg = stage_config({}, output_dir=str(tmp_path))
    context = StageContext(cfg, "fp", engines=engines)
    ex = LocalExecutor(context, batch_size=2)
    filter_spec = StageSpec("filter", cfg, "fp", str(tmp_path / "work" / "filter"))
    templatize_spec = StageSpec("templatize", cfg, "fp", str(tmp_path / "work" / "templatize"))
    return ex, filter_spec, templatize_spec


def test_local_and_ray_executors_implement_the_declared_interface():
    assert issubclass(LocalExecutor, Executor)
    ray = pytest.importorskip("fineinstructions.executors.ray")
    assert issubclass(ray.RayExecutor, Executor) and not issubclass(ray.RayExecutor, LocalExecutor)


def test_a_sequential_stage_carries_its_state_across_shards_and_across_a_resume(tmp_path):
    from fineinstructions.backends.embeddings import make_embedder
    from fineinstructions.stages.index import TemplateIndex

    cfg = stage_config({"match": {"max_template_uses": 1, "top_k": 1, "embedder": "hashing-sim:64"}},
                       output_dir=str(tmp_path))
    templates = [Template(template_id=f"t{i}", template=f"What is <fi>{topic}</fi>?",
                          compatible_document_description=f"An article about {topic}.")
                 for i, topic in enumerate(["rivers and lakes", "rivers and seas"])]
    text = "Rivers and lakes and seas hold most of the fresh and salt water that the plants and animals " * 3
    shards = [(i, [Document(document_id=f"d{i}", text=text)]) for i in range(3)]

    def executor_with_index() -> tuple[LocalExecutor, StageSpec]:
        context = StageContext(cfg, "fp")
        context.use_index(TemplateIndex.build(templates, make_embedder("hashing-sim:64")), "index-key")
        return LocalExecutor(context, batch_size=2), StageSpec("match", cfg, "fp", str(tmp_path / "work" / "match"))

    ex, spec = executor_with_index()
    with ex:
        matched = ex.run(spec, shards, depends="index-key")
    assert [len(matched[s]) for s in (0, 1, 2)] == [1, 1, 0]  # each template once in the corpus: none is left
    (tmp_path / "work" / "match" / "shard-000002.parquet").unlink()  # a run killed before the last shard
    ex, spec = executor_with_index()
    with ex:
        resumed = ex.run(spec, shards, depends="index-key")
    assert resumed == matched and ex.computed == {("match", 2)}  # the state was rebuilt from read-back shards


def test_committed_shards_are_read_back_without_building_the_stage(tmp_path, monkeypatch):
    calls = []
    # (a valid template of both queries: "<fi>x</fi>" would copy the first query's own value, which templatize
    # refuses and retries)
    engine = FakeBackend(lambda c: calls.append(c) or '{"template": "What is <fi>name of a variable</fi>?", '
                         '"compatible_document_description": "An article about a variable."}', model_id="scripted")
    queries = [(0, [Query(query_id="q1", text="What is x?")]), (1, [Query(query_id="q2", text="What is y?")])]
    ex, _, spec = executor(tmp_path, {"templatize": engine})
    with ex:
        first = ex.run(spec, queries)
    assert len(calls) == 2 and set(first) == {0, 1}
    ex, _, spec = executor(tmp_path, {"templatize": engine})
    built = []
    monkeypatch.setattr(ex, "_stage", lambda s: built.append(s) or pytest.fail("the stage was built"))
    with ex:
        again = ex.run(spec, queries)
    assert again == first and not built and len(calls) == 2
    assert ex.stats["templatize"].rows_in == 2  # the stats of read-back shards still count

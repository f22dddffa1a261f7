"""Every stage builds itself from its config section; the registry lists them in pipeline order; the spec an
executor receives is small and picklable."""

from __future__ import annotations

import pickle

import pytest

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.config import stage_config
from fineinstructions.errors import ConfigError
from fineinstructions.records import Document, Match, Pair, Query, Template
from fineinstructions.stages.base import Stage
from fineinstructions.stages.context import StageContext
from fineinstructions.stages.registry import STAGE_ORDER, StageSpec, stage_class

TYPES = {"query_filter": (Query, Query), "templatize": (Query, Template), "template_dedup": (Template, Template),
         "match": (Document, Match), "instantiate": (Match, Pair), "judge": (Pair, Pair), "filter": (Pair, Pair)}


def test_registry_lists_every_stage_in_pipeline_order_with_its_declared_types():
    assert tuple(TYPES) == STAGE_ORDER
    for name in STAGE_ORDER:
        cls = stage_class(name)
        assert issubclass(cls, Stage) and cls.name == name
        assert (cls.input_type, cls.output_type) == TYPES[name]
    assert {n for n in STAGE_ORDER if stage_class(n).whole_shard} == {"query_filter", "template_dedup", "filter"}
    assert {n for n in STAGE_ORDER if stage_class(n).holds_model} == {"templatize", "instantiate", "judge"}
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_class("summarize")


def test_model_stages_take_their_settings_from_their_section_and_their_engine_from_the_context():
    cfg = stage_config({"templatize": {"max_tokens": 77, "retries": 5, "prompt_version": "v1"},
                        "instantiate": {"min_coverage": 0.5, "max_tokens": 99},
                        "judge": {"max_tokens": 33}, "run": {"seed": 7}})
    engines = {name: FakeBackend(lambda c: "", model_id=name) for name in ("templatize", "instantiate", "judge")}
    context = StageContext(cfg, "fp123", engines=engines)
    templatize = stage_class("templatize").from_config(cfg, context)
    assert (templatize.max_tokens, templatize.retries, templatize.seed) == (77, 5, 7)
    assert templatize.prompt.version.endswith("v1") and templatize.backend is engines["templatize"]
    instantiate = stage_class("instantiate").from_config(cfg, context)
    assert instantiate.min_coverage == 0.5 and instantiate.backend is engines["instantiate"]
    assert instantiate.config_fingerprint == "fp123"
    judge = stage_class("judge").from_config(cfg, context)
    assert judge.sampling.max_tokens == 33 and judge.backend is engines["judge"]


def test_match_declares_its_state_across_shards_and_the_filter_holds_none():
    capped, uncapped = stage_config({}), stage_config({"match": {"max_template_uses": None}})
    assert stage_class("match").sequential(capped) and not stage_class("match").sequential(uncapped)
    assert not stage_class("filter").sequential(capped)  # pair dedup is its own step across ranks
    assert not stage_class("instantiate").sequential(capped)


def test_the_pipelines_filter_keeps_duplicates_for_the_dedup_step():
    cfg = stage_config({})
    stage = stage_class("filter").from_config(cfg, StageContext(cfg))
    pair = Pair(document_id="d1", template_id="t1", text="a b c " * 20, template="t", instantiated_instruction="Q?",
                answer="An answer of enough words.", excerpt_coverage=1.0, judge_score=5, token_count=100,
                synthetic_token_count=10)
    again = pair.model_copy(update={"document_id": "d2"})
    assert stage.process([pair, again]).records == [pair, again]


def test_model_stages_on_engines_that_batch_in_flight_get_more_rows_a_call():
    vllm = stage_config({"instantiate": {"backend": {"kind": "vllm", "model": "m"}},
                         "run": {"batch_size": 8, "requests_in_flight": 96}})
    assert StageSpec("instantiate", vllm, "", "").feed_size == 96
    assert StageSpec("judge", vllm, "", "").feed_size == 8  # the judge runs on the default llama.cpp engine
    assert StageSpec("filter", vllm, "", "").feed_size == 8


def test_a_spec_is_small_and_picklable_and_builds_its_stage(tmp_path):
    cfg = stage_config({"templatize": {"near_duplicate_threshold": 0.5}}, output_dir=str(tmp_path))
    spec = StageSpec("template_dedup", cfg, cfg.fingerprint(), str(tmp_path / "work" / "template_dedup"))
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy.stage_class is spec.stage_class
    stage = copy.build(StageContext(copy.config))
    assert stage.near_duplicate_threshold == 0.5

"""The per-request cache: keyed by model, conversation, sampling and namespace; failures never stored."""

from __future__ import annotations

import multiprocessing

from fineinstructions.backends.base import Generation, SamplingParams
from fineinstructions.backends.cache import CachedBackend, RequestCache, request_key
from fineinstructions.backends.fake import FakeBackend


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Answer."}, {"role": "user", "content": text}]


def test_second_call_is_served_from_the_cache_and_only_misses_reach_the_engine(tmp_path):
    engine = FakeBackend(lambda c: "answer to " + c[-1]["content"])
    cached = CachedBackend(engine, RequestCache(tmp_path / "cache.sqlite"), "instantiate/v2")
    first = cached.generate([conv("a"), conv("b")], SamplingParams())
    again = cached.generate([conv("b"), conv("c"), conv("a")], SamplingParams())
    assert [g.text for g in first] == ["answer to a", "answer to b"]
    assert [g.text for g in again] == ["answer to b", "answer to c", "answer to a"]  # order kept
    assert [c[-1]["content"] for c in engine.calls] == ["a", "b", "c"]
    assert again[0].completion_tokens == first[1].completion_tokens  # token counts survive the cache
    assert cached.stats.extra == {"cache_hits": 2, "cache_misses": 3}
    assert cached.stats.requests == 3  # only what the engine really did


def test_key_changes_with_model_sampling_namespace_and_prompt():
    base = request_key("m", conv("a"), SamplingParams(), "instantiate/v2")
    assert request_key("m", conv("a"), SamplingParams(), "instantiate/v2") == base
    assert request_key("other", conv("a"), SamplingParams(), "instantiate/v2") != base
    assert request_key("m", conv("a"), SamplingParams(max_tokens=7), "instantiate/v2") != base
    assert request_key("m", conv("a"), SamplingParams(temperature=0.7), "instantiate/v2") != base
    assert request_key("m", conv("a"), SamplingParams(), "instantiate/v1") != base
    assert request_key("m", conv("a "), SamplingParams(), "instantiate/v2") != base


def test_failed_requests_are_not_cached(tmp_path):
    class Flaky(FakeBackend):
        def generate(self, conversations, sampling):
            return [Generation("", error="http_503") for _ in conversations]

    cache = RequestCache(tmp_path / "cache.sqlite")
    out = CachedBackend(Flaky(lambda c: ""), cache).generate([conv("a")], SamplingParams())
    assert not out[0].ok and len(cache) == 0
    engine = FakeBackend(lambda c: "ok")
    assert CachedBackend(engine, cache).generate([conv("a")], SamplingParams())[0].text == "ok"
    assert len(engine.calls) == 1 and len(cache) == 1


def _fill(path: str, start: int) -> None:
    cache = RequestCache(path)
    cache.put_many([(f"k{i}", Generation(f"t{i}", 1, 1)) for i in range(start, start + 200)])
    cache.close()


def test_several_processes_share_one_cache_file(tmp_path):
    path = str(tmp_path / "cache.sqlite")
    RequestCache(path).close()
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_fill, args=(path, start)) for start in (0, 200, 400)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    cache = RequestCache(path)
    assert len(cache) == 600
    assert cache.get_many(["k0", "k599", "missing"]).keys() == {"k0", "k599"}


def test_stage_stats_carry_cache_hits_and_engine_counters(tmp_path):
    from fineinstructions.records import Pair
    from fineinstructions.stages.base import StageStats
    from fineinstructions.stages.judge import JudgeStage

    engine = FakeBackend(lambda c: "<feedback>Fine.</feedback><score>5</score>")
    engine.stats.extra["throttled"] = 0
    cached = CachedBackend(engine, RequestCache(tmp_path / "cache.sqlite"), "judge/v2")
    pair = Pair(document_id="d", template_id="t", text="Some document text here.", template="What is <fi>x</fi>?",
                instantiated_instruction="What is it?", answer="Some document text here.",
                answer_with_markers="Some document text here.")
    stats = StageStats()
    stage = JudgeStage(cached)
    engine.stats.extra["throttled"] = 5  # counted before this stage: not its own

    def throttled_twice(conversations, sampling, generate=engine.generate):
        engine.stats.extra["throttled"] += 2
        engine.stats.extra["concurrency"] = 3  # a level, not a count: never summed
        return generate(conversations, sampling)

    engine.generate = throttled_twice
    stage.run_batch([pair], stats)
    stage.run_batch([pair], stats)
    assert stats.backend["cache_hits"] == 1 and stats.backend["cache_misses"] == 1
    assert stats.backend["throttled"] == 2 and "concurrency" not in stats.backend
    assert StageStats.from_dict(stats.to_dict()).backend == stats.backend

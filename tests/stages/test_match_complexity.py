"""The paper's matching defaults and complexity-weighted sampling among the matches, on the hashing embedder."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from fineinstructions.backends.embeddings import make_embedder
from fineinstructions.config import MatchConfig, stage_config
from fineinstructions.contracts.templates import template_variables
from fineinstructions.errors import ConfigError
from fineinstructions.records import Document, Template
from fineinstructions.stages.index import TemplateIndex
from fineinstructions.stages.match import MatchStage, bank_complexity, document_rng

VOCABULARY = [f"topic{i}" for i in range(40)]
PER_CLASS = 30


def bank_templates(popularity: dict[int, int] | None = None) -> list[Template]:
    """30 templates of each of 1 to 5 variables. Descriptions of one-variable templates share more words with
    the documents, as simple templates do with a real retriever (their descriptions are generic)."""
    rng = random.Random(7)
    out = []
    for variables in range(1, 6):
        for i in range(PER_CLASS):
            slots = " and ".join(f"<fi>thing {j}</fi>" for j in range(variables))
            shared = 8 if variables == 1 else 3
            words = rng.sample(VOCABULARY, shared) + [f"noise{variables}x{i}x{j}" for j in range(8 - shared)]
            out.append(Template(template_id=f"v{variables}-{i}", template=f"Compare {slots} in case {i}?",
                                compatible_document_description=" ".join(words),
                                popularity=(popularity or {}).get(variables, 1)))
    return out


def documents(n: int, seed: int = 3) -> list[Document]:
    rng = random.Random(seed)
    return [Document(document_id=f"doc-{i}", text=" ".join(rng.choice(VOCABULARY) for _ in range(60)))
            for i in range(n)]


@pytest.fixture(scope="module")
def embedder():
    return make_embedder("hashing-sim:64")


@pytest.fixture(scope="module")
def bank(embedder):
    return TemplateIndex.build(bank_templates(), embedder, "Flat")


def stage(index, embedder, **settings) -> MatchStage:
    """A stage whose pool is the whole bank (every template a candidate), global vector only."""
    values = {"top_k": 6, "coverage_chunks": 0, "per_vector_k": index.ntotal, "min_score": -1.0} | settings
    return MatchStage(index, embedder, **values)


def class_shares(matches, classes: int = 4) -> np.ndarray:
    counts = Counter(min(len(template_variables(m.template)), classes) for m in matches)
    total = sum(counts.values())
    return np.array([counts[c] / total for c in range(1, classes + 1)])


def test_matching_defaults_are_the_papers(embedder, bank):
    mc = MatchConfig()
    assert (mc.coverage_chunks, mc.top_k, mc.sigma, mc.alpha) == (5, 6, 0.05, 1.0)
    assert (mc.complexity_sampling, mc.complexity_weights, mc.min_score) == ("bank", None, 0.0)
    config = stage_config({"run": {"seed": 11}})
    context = SimpleNamespace(index=bank, embedder=embedder, hub_bias=None)
    built = MatchStage.from_config(config, context)  # type: ignore[arg-type]
    assert (built.coverage_chunks, built.top_k, built.complexity_sampling, built.seed) == (5, 6, "bank", 11)
    assert (mc.hub_damping, mc.hub_reference, mc.template_text) == (0.5, "documents", "both")  # measured defaults
    direct = MatchStage(bank, embedder)
    assert (direct.coverage_chunks, direct.top_k, direct.complexity_sampling) == (5, 6, "bank")
    assert len(embedder.encode_with_coverage([documents(1)[0].text], built.coverage_chunks)[0]) == 1 + 5
    result = built.process(documents(1))
    assert len(result.records) == 6 and {m.part for m in result.records} <= set(range(-1, 5))


def test_complexity_settings_are_validated():
    assert MatchConfig(complexity_sampling=False).complexity_sampling == "off"  # type: ignore[arg-type]
    assert MatchConfig(complexity_sampling="weights", complexity_weights=[1, 0, 2]).complexity_weights == [1, 0, 2]
    for bad in ({"complexity_sampling": "weights"}, {"complexity_sampling": "weights", "complexity_weights": [0, 0]},
                {"complexity_sampling": "weights", "complexity_weights": [1, -1]}, {"complexity_weights": [1, 2]}):
        with pytest.raises(ConfigError, match="complexity_"):
            stage_config({"match": bad})
    with pytest.raises(ValueError, match="complexity_sampling"):
        MatchStage(None, None, complexity_sampling="weights")  # type: ignore[arg-type]


def test_the_same_seed_and_document_choose_the_same_templates(bank, embedder):
    docs = documents(12)

    def chosen(matcher: MatchStage, batch: list[Document]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for m in matcher.process(batch).records:
            out.setdefault(m.document_id, []).append(m.template_id)
        return out

    first = chosen(stage(bank, embedder, seed=5), docs)
    # Another batching, another order, a fresh stage (a resumed run or another rank): the same picks.
    again = stage(bank, embedder, seed=5)
    regrouped = chosen(again, docs[7:][::-1]) | chosen(again, docs[:7])
    assert regrouped == first
    other = chosen(stage(bank, embedder, seed=6), docs)
    assert other != first and other.keys() == first.keys()
    assert document_rng(5, "doc-1").random() == document_rng(5, "doc-1").random() != document_rng(5, "doc-2").random()


def test_chosen_complexity_follows_the_weights_not_the_retrieval(bank, embedder):
    docs = documents(300)
    plain = stage(bank, embedder, complexity_sampling="off").process(docs).records
    assert class_shares(plain)[0] > 0.75  # retrieval alone: mostly simple templates
    weights = [0.1, 0.2, 0.3, 0.4]
    sampled = stage(bank, embedder, complexity_sampling="weights", complexity_weights=weights).process(docs).records
    assert len(sampled) == 6 * len(docs)
    assert np.abs(class_shares(sampled) - np.array(weights)).max() < 0.04


def test_bank_sampling_follows_the_banks_own_mix_by_popularity(embedder):
    index = TemplateIndex.build(bank_templates(popularity={3: 4}), embedder, "Flat")
    matcher = stage(index, embedder)  # the default: "bank"
    # 30 templates per class; class 3 stands for 4 queries each; 5 variables count as 4+.
    expected = np.array([30, 30, 120, 60]) / 240
    assert np.allclose(matcher.target[1:], expected) and matcher.target[0] == 0
    assert np.allclose(bank_complexity(index, sample=40)[1:].sum(), 1.0)  # a sample of the bank
    shares = class_shares(matcher.process(documents(300)).records)
    assert np.abs(shares - expected).max() < 0.04


def test_a_class_is_won_by_its_most_relevant_candidate_and_weight_zero_only_fills_up(bank, embedder):
    docs = documents(20)
    only_simple = stage(bank, embedder, complexity_sampling="weights", complexity_weights=[1, 0, 0, 0],
                        mmr_lambda=1.0).process(docs).records
    plain = stage(bank, embedder, complexity_sampling="off", mmr_lambda=1.0).process(docs).records
    simple = [m for m in plain if len(template_variables(m.template)) == 1]
    assert [m.template_id for m in only_simple if m.document_id == "doc-0"] == \
        [m.template_id for m in simple if m.document_id == "doc-0"][:6]
    # A pool with three one-variable templates: they come first, then the others by relevance.
    small = TemplateIndex.build([t for t in bank_templates() if t.template_id in {"v1-0", "v1-1", "v1-2"}
                                 or not t.template_id.startswith("v1-")], embedder, "Flat")
    picks = stage(small, embedder, complexity_sampling="weights", complexity_weights=[1, 0, 0, 0],
                  mmr_lambda=1.0).process(docs[:1]).records
    assert [len(template_variables(m.template)) for m in picks][:3] == [1, 1, 1]
    rest = picks[3:]
    assert all(len(template_variables(m.template)) > 1 for m in rest)
    assert [m.score for m in rest] == sorted((m.score for m in rest), reverse=True)


def test_a_pool_no_larger_than_top_k_is_chosen_as_without_sampling(bank, embedder):
    docs = documents(10)
    few = {"per_vector_k": 6}
    off = stage(bank, embedder, complexity_sampling="off", **few).process(docs).records
    on = stage(bank, embedder, complexity_sampling="weights", complexity_weights=[0, 0, 0, 1], **few).process(docs)
    assert [(m.document_id, m.template_id, m.rank) for m in on.records] == \
        [(m.document_id, m.template_id, m.rank) for m in off]

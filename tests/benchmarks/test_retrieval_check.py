"""The retrieval check's metrics on hand-made cases (no model call), its CSLS bias on toy vectors, the match
stage over its variant index with the hashing embedder, and the FAQ loader's RST parsing on a small page."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.faq_source import page_pairs
from benchmarks.retrieval_check import (
    CachingEmbedder,
    evaluate,
    gold_ranks,
    hubness,
    hubs,
    mean_reciprocal_rank,
    per_rank,
    recall_at,
    run_match,
    template_bias,
    variant_index,
)

from fineinstructions.backends.embeddings import make_embedder
from fineinstructions.config import stage_config
from fineinstructions.records import Document, Template

CANDIDATES = {
    "d1": ["g1", "hub", "x"],  # gold at rank 1
    "d2": ["hub", "y", "g2"],  # gold at rank 3
    "d3": ["hub", "z"],  # gold missing
    "d4": ["w", "v"],  # gold missing; no hub
}
GOLD = {"d1": "g1", "d2": "g2", "d3": "g3", "d4": "g4", "d5": "g5"}  # d5 was refused: no candidates


def test_recall_mrr_and_ranks():
    ranks = gold_ranks(CANDIDATES, GOLD)
    assert ranks == {"d1": 1, "d2": 3, "d3": None, "d4": None, "d5": None}
    assert recall_at(ranks, 6) == pytest.approx(2 / 5)
    assert recall_at(ranks, 1) == pytest.approx(1 / 5)
    assert recall_at(ranks, 2) == pytest.approx(1 / 5)
    assert mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3) / 5)


def test_hubness_counts_documents_not_slots():
    share, template, count = hubness(CANDIDATES, 5)
    assert (template, count) == ("hub", 3) and share == pytest.approx(3 / 5)
    assert hubness({"a": ["t", "t"], "b": ["u"]})[2] == 1  # a template twice in one list counts once
    assert hubness({}) == (0.0, None, 0)
    top = hubs(CANDIDATES, top=2)
    assert top[0] == ("hub", 3, {1: 2, 2: 1})
    rows = per_rank(CANDIDATES, 3, 5)
    assert [r["distinct"] for r in rows] == [3, 4, 2]  # rank 1: g1, hub, w; rank 2: hub, y, z, v; rank 3: x, g2
    assert rows[0]["top_share"] == pytest.approx(2 / 5)


def test_evaluate_puts_it_together():
    m = evaluate(CANDIDATES, GOLD, top_k=3)
    assert m.documents == 5 and m.recall_at_6 == pytest.approx(0.4) and m.recall_at_1 == pytest.approx(0.2)
    assert m.hubness == pytest.approx(0.6) and m.hub_template == "hub"
    assert m.distinct == len({"g1", "hub", "x", "y", "g2", "z", "w", "v"})


def test_template_bias_flags_the_hub():
    # three templates; the first sits close to every document, the others to one each
    templates = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    templates /= np.linalg.norm(templates, axis=1, keepdims=True)
    documents = np.eye(3, dtype=np.float32)
    bias = template_bias(templates, documents, k=2)
    assert bias.mean() == pytest.approx(0, abs=1e-6)
    assert bias[0] > bias[1] and bias[0] > bias[2]
    self_bias = template_bias(templates, None, k=1)  # nearest other template, never itself
    assert self_bias[0] == pytest.approx(max(self_bias))


def test_variant_index_with_bias_demotes_a_hub_in_the_match_stage():
    from fineinstructions.stages.index import TemplateIndex

    embedder = CachingEmbedder(make_embedder("hashing-sim"))
    words = ["river", "valley", "mountain", "lake", "forest", "glacier", "delta", "canyon"]
    # every document is mostly generic words, which one broad template (the hub) shares with all of them
    hub = Template(template_id="hub", template="Describe <fi>place</fi>.",
                   compatible_document_description="geography of a place")
    own = [Template(template_id=f"t-{w}", template=f"Tell me about the <fi>{w}</fi>.",
                    compatible_document_description=f"the {w}") for w in words]
    index = TemplateIndex.build([hub, *own], embedder, "Flat")
    documents = [Document(document_id=w, text=" ".join([w] * 6 + ["geography of a place"] * 6)) for w in words]
    gold = {w: f"t-{w}" for w in words}
    config = stage_config({"match": {"top_k": 1, "mmr_lambda": 1.0, "embedder": "hashing-sim"}})
    plain, _ = run_match(config, embedder, index, documents)
    assert hubness(plain) == (1.0, "hub", 8) and evaluate(plain, gold, 1).recall_at_6 == 0.0
    vectors = index.vectors_at(list(range(index.ntotal)))
    same, _ = run_match(config, embedder, variant_index(index.table, vectors, embedder), documents)
    assert same == plain  # the variant index without bias is the stage's own index
    reference = embedder.encode([d.text for d in documents])
    biased = variant_index(index.table, vectors, embedder, template_bias(vectors, reference, 3))
    damped, _ = run_match(config, embedder, biased, documents)
    assert hubness(damped)[0] == pytest.approx(1 / 8) and evaluate(damped, gold, 1).recall_at_1 == 1.0


def test_the_embedded_text_of_a_template_is_its_description_its_words_or_both():
    from fineinstructions.stages.index import embedded_text

    template, description = "How do I install <fi>a package</fi> on <fi>OS</fi>?", "A setup guide."
    assert embedded_text(template, description, "description") == description
    assert embedded_text(template, description, "template") == "How do I install a package on OS ?"
    assert embedded_text(template, description, "both") == "How do I install a package on OS ?\nA setup guide."


PAGE = """\
.. _faq:

==========================
 Frequently Asked Questions
==========================

General
=======

.. _faq-one:

Is the **widget** fast?
-----------------------

**Answer:** Yes, see :ref:`speed <faq-speed>` and ``widget.run()``.

.. note::

    It was measured with :setting:`workers` on `a laptop <https://example.org>`_.

Details
~~~~~~~

More words here::

    code line

Setup
=====

How do I install it?
--------------------

Run the installer.
"""


def test_rst_page_gives_question_answer_pairs():
    pairs = page_pairs(PAGE, "demo", "docs/faq.rst")
    assert [p.question for p in pairs] == ["Is the widget fast?", "How do I install it?"]
    first = pairs[0].answer
    assert first.startswith("Yes, see speed and widget.run().")
    assert "measured with workers on a laptop." in first and "Details" in first and "code line" in first
    assert "_faq" not in first and ".. note" not in first and "Setup" not in first
    assert pairs[1].answer == "Run the installer."

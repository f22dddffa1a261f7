"""Hub damping: the reverse-search estimate of CSLS's r(t) and its effect on the match stage's choice."""

from __future__ import annotations

import numpy as np

from fineinstructions.records import Template
from fineinstructions.stages.hubness import hub_bias
from fineinstructions.stages.index import TemplateIndex


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def flat_index(vectors: np.ndarray) -> TemplateIndex:
    table = Template.to_table([Template(template_id=f"t{i}", template=f"What is <fi>thing {i}</fi>?",
                                        compatible_document_description=f"about {i}") for i in range(len(vectors))])
    return TemplateIndex.from_vectors(vectors, table, "test", "test", spec="Flat")


def world(seed: int = 0, templates: int = 60, documents: int = 200, dim: int = 16):
    """Templates and documents spread at random, plus template 0: a hub near the centre of all documents."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    docs = unit(centre + 1.5 * rng.normal(size=(documents, dim)))
    tpl = unit(centre + 1.5 * rng.normal(size=(templates, dim)))
    tpl[0] = unit(centre[None, :])[0]
    return tpl, docs


def test_the_hub_gets_the_largest_bias_and_an_unretrieved_template_none():
    tpl, docs = world()
    tpl[-1] = -unit(docs.mean(axis=0, keepdims=True))[0]  # faces away from every document
    bias = hub_bias(flat_index(tpl), docs, k=10, depth=5)
    assert bias.shape == (len(tpl),) and bias.dtype == np.float32
    assert int(np.argmax(bias)) == 0 and bias[0] > 0
    assert bias[-1] == 0.0
    assert (bias >= 0).all()


def test_with_full_depth_it_is_csls_shifted_by_a_constant():
    tpl, docs = world(seed=1)
    bias = hub_bias(flat_index(tpl), docs, k=10, depth=len(tpl))  # every reference sees every template
    exact = np.sort(tpl @ docs.T, axis=1)[:, -10:].mean(axis=1)  # r(t): mean of its 10 nearest documents
    shift = exact - bias
    assert np.allclose(shift, shift[0], atol=1e-5)


def test_damping_moves_the_hub_out_of_the_candidates_only_when_asked():
    from collections import Counter

    from fineinstructions.records import Document
    from fineinstructions.stages.match import MatchStage

    # Document i is 0.7 of a shared direction h plus its own direction e_i; template i leans to e_i, and the
    # hub is h itself: second candidate of every document (0.7) after the document's own template (0.88).
    n = 40
    h, e = np.eye(n + 1)[0], np.eye(n + 1)[1:]
    docs = unit(0.7 * h + 0.714 * e)
    tpl = unit(np.vstack([h, 0.3 * h + 0.954 * e]))
    index = flat_index(tpl)

    class Vectors:  # an embedder stand-in: document "i ..." is the vector docs[i]
        model_id = fingerprint = "test"
        dimension = n + 1

        def encode_with_coverage(self, texts, chunks=0, sigma=0.05, alpha=1.0, max_windows=64):
            return [docs[int(t.split()[0])][None, :] for t in texts]

    documents = [Document(document_id=str(i), text=f"{i} " + "word " * 30) for i in range(n)]
    bias = hub_bias(index, docs, k=10, depth=10)
    assert int(np.argmax(bias)) == 0

    def hub_share(damping: float) -> float:
        stage = MatchStage(index, Vectors(), top_k=2, coverage_chunks=0, mmr_lambda=1.0,
                           complexity_sampling="off", hub_bias=bias, hub_damping=damping)
        result = stage.process(documents)
        assert len(result.records) == 2 * n
        return Counter(m.template_id for m in result.records)["t0"] / n

    assert hub_share(0.0) == 1.0  # the hub is every document's candidate
    assert hub_share(2.0) == 0.0  # damped below the other templates


def test_an_empty_reference_or_index_gives_no_bias():
    tpl, _ = world()
    assert not hub_bias(flat_index(tpl), np.zeros((0, tpl.shape[1]), np.float32)).any()


def test_a_run_with_hub_damping_stores_the_bias_beside_the_index_and_a_rerun_reads_it(tmp_path):
    from fineinstructions.stages.hubness import BIAS_FILE, BIAS_KEY_FILE
    from tests.test_pipeline import config_for, dataset_rows, run_scripted

    cfg = config_for(tmp_path)
    cfg.match.hub_damping, cfg.match.hub_sample = 1.0, 50
    run_scripted(cfg)
    index_dir = tmp_path / "run" / "index"
    bias = np.load(index_dir / BIAS_FILE)
    assert len(bias) > 0 and (bias >= 0).all() and (index_dir / BIAS_KEY_FILE).is_file()
    rows, stamp = dataset_rows(cfg), (index_dir / BIAS_FILE).stat().st_mtime_ns
    run_scripted(cfg)  # finished: nothing to redo, the stored bias is not recomputed
    assert (index_dir / BIAS_FILE).stat().st_mtime_ns == stamp and dataset_rows(cfg) == rows
    off = config_for(tmp_path, out="off")
    off.match.hub_damping = 0.0
    assert off.fingerprint() != cfg.fingerprint()  # damping changes the matches, so it names another run


def test_reference_documents_are_a_seeded_wiki_sample_or_the_runs_first_documents(tmp_path):
    from fineinstructions.stages.hubness import reference_documents
    from tests.test_pipeline import DOCUMENTS, config_for

    cfg = config_for(tmp_path)
    cfg.match.hub_reference, cfg.match.hub_sample = "wiki", 7
    wiki = reference_documents(cfg)
    assert len(wiki) == 7 and [d.document_id for d in wiki] == [d.document_id for d in reference_documents(cfg)]
    cfg.run.seed = 1
    assert [d.document_id for d in reference_documents(cfg)] != [d.document_id for d in wiki]
    cfg.match.hub_reference, cfg.match.hub_sample = "documents", 2
    assert [d.text for d in reference_documents(cfg)] == [text for _, text in DOCUMENTS[:2]]

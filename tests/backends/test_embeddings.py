from __future__ import annotations

import numpy as np

from fineinstructions.backends.embeddings import coverage_pool


def test_coverage_pool_shapes_and_unit_norm():
    tokens = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    pooled = coverage_pool(tokens, chunks=10, sigma=0.05, alpha=1.0)
    assert pooled.shape == (11, 8)
    assert np.allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-5)
    assert np.allclose(pooled[0], tokens.mean(0) / np.linalg.norm(tokens.mean(0)), atol=1e-5)


def test_local_vectors_follow_their_part_of_the_document():
    first, second = np.eye(4)[0], np.eye(4)[1]
    tokens = np.stack([first] * 50 + [second] * 50).astype(np.float32)
    pooled = coverage_pool(tokens, chunks=2, sigma=0.05, alpha=1.0)
    assert pooled[1] @ first > 0.99 and pooled[2] @ second > 0.99


def test_alpha_zero_gives_the_global_vector_everywhere():
    tokens = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32)
    pooled = coverage_pool(tokens, chunks=3, sigma=0.1, alpha=0.0)
    assert np.allclose(pooled[1:], pooled[0], atol=1e-6)


def test_real_embedder_one_pass_gives_global_plus_local(embedder):
    texts = ["Paris is the capital of France. " * 5 + "Bananas are yellow fruit. " * 5, "short text"]
    pooled = embedder.encode_with_coverage(texts, chunks=4)
    assert [p.shape for p in pooled] == [(5, embedder.dimension)] * 2
    plain = embedder.encode(texts)
    assert float(plain[0] @ pooled[0][0]) > 0.99  # the global row is the usual mean-pooled embedding
    france, banana = embedder.encode(["the capital of France", "yellow fruit"])
    assert pooled[0][1] @ france > pooled[0][1] @ banana  # early chunk is about France
    assert pooled[0][4] @ banana > pooled[0][4] @ france  # late chunk is about bananas

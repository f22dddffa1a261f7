"""A small real job for the execution benchmarks: packaged ShareGPT questions and Wikipedia leads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fineinstructions.io.sources import demo_documents, demo_queries


def write_job(folder: Path, queries: int, documents: int, model: str | None,
              run: dict[str, Any] | None = None) -> Path:
    """Inputs and a config in `folder`; `model` None means the scripted engine (tests/scripted_backend.py)."""
    (folder / "queries.jsonl").write_text("".join(json.dumps({"id": q.query_id, "text": q.text}) + "\n"
                                                  for q in demo_queries(queries, 0)))
    (folder / "documents.jsonl").write_text("".join(json.dumps({"id": d.document_id, "text": d.text}) + "\n"
                                                    for d in demo_documents(documents, 0)))
    generator = ({"kind": "llamacpp", "model": model, "n_threads": 2} if model
                 else {"kind": "custom", "model": "tests.scripted_backend:make"})
    config = {
        "queries": {"path": str(folder / "queries.jsonl")},
        "documents": {"path": str(folder / "documents.jsonl")},
        "generator": generator,
        "templatize": {"max_tokens": 80}, "instantiate": {"max_tokens": 160}, "judge": {"max_tokens": 60},
        "match": {"top_k": 2},
        "run": {"shard_size": 4, "batch_size": 2} | (run or {}),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path

"""Stage 3: embed the templates' compatible-document descriptions into a FAISS inner-product index."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq

from fineinstructions.backends.embeddings import Embedder
from fineinstructions.records import Template

INDEX_FILE = "templates.faiss"
META_FILE = "index.json"
TEMPLATES_FILE = "templates.parquet"


class IndexMismatch(ValueError):
    """The index was built with another embedding model than the one asked to query it."""


@dataclass
class TemplateIndex:
    """Unit vectors of template descriptions in an exact FAISS index, with the templates themselves."""

    index: faiss.Index
    templates: list[Template]
    embedder_id: str
    embedder_fingerprint: str
    duplicates_removed: int = 0

    @classmethod
    def build(cls, templates: Sequence[Template], embedder: Embedder) -> TemplateIndex:
        """Exact-deduplicate templates by id (first kept) and index their document descriptions."""
        unique: dict[str, Template] = {}
        for template in templates:
            unique.setdefault(template.template_id, template)
        kept = list(unique.values())
        vectors = embedder.encode([t.compatible_document_description for t in kept])
        index = faiss.IndexFlatIP(embedder.dimension)
        if len(vectors):
            index.add(np.ascontiguousarray(vectors))
        return cls(index, kept, embedder.model_id, embedder.fingerprint, len(templates) - len(kept))

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k == 0 or len(vectors) == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def save(self, directory: str | Path) -> None:
        """Write index, templates and metadata to a temporary folder, then rename it into place."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        faiss.write_index(self.index, str(tmp / INDEX_FILE))
        pq.write_table(Template.to_table(self.templates), tmp / TEMPLATES_FILE)
        meta = {"embedder": self.embedder_id, "embedder_fingerprint": self.embedder_fingerprint,
                "templates": len(self.templates), "dimension": self.index.d, "kind": "IndexFlatIP",
                "duplicates_removed": self.duplicates_removed}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | None = None) -> TemplateIndex:
        """Load a saved index; refuse it when `embedder` is not the model that built it."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} is not a template index (no {META_FILE})")
        meta = json.loads(meta_path.read_text())
        if embedder is not None and meta["embedder_fingerprint"] != embedder.fingerprint:
            raise IndexMismatch(
                f"index {directory} was built with embedding model {meta['embedder']!r} "
                f"(fingerprint {meta['embedder_fingerprint']}), not {embedder.model_id!r} "
                f"({embedder.fingerprint}); rebuild it or query it with the same model"
            )
        index = faiss.read_index(str(directory / INDEX_FILE))
        templates = Template.from_table(pq.read_table(directory / TEMPLATES_FILE))
        return cls(index, templates, meta["embedder"], meta["embedder_fingerprint"],
                   meta.get("duplicates_removed", 0))

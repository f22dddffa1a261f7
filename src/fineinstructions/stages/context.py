"""What a stage may take from where it runs: engines, the embedder and the template index.

The pipeline's driver, a Ray actor, a stage command of the CLI and the Python API each make one
`StageContext`; stages take what they need from it in `from_config` and never build engines themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fineinstructions.backends.base import Backend
from fineinstructions.backends.factory import BackendPool
from fineinstructions.io.run_folder import RunFolder

if TYPE_CHECKING:
    from fineinstructions.backends.embeddings import Embedder
    from fineinstructions.config import GenerativeStage, PipelineConfig
    from fineinstructions.stages.index import ShardedTemplateIndex, TemplateIndex
    from fineinstructions.stages.registry import StageSpec


class StageContext:
    """Engines (one per backend config, shared by the stages), the embedder and the index of one process.

    `engines` serves stages with given backends instead of configured ones (e.g. a teacher and a student);
    the index is the one the pipeline just built (`use_index`), else the one saved in `index_dir`."""

    def __init__(self, config: PipelineConfig, fingerprint: str = "", backends: BackendPool | None = None,
                 index_dir: str | Path | None = None, engines: Mapping[str, Backend] | None = None):
        self.config = config
        self.fingerprint = fingerprint
        self.backends = backends or BackendPool()
        self.index_dir = Path(index_dir) if index_dir is not None else Path(config.run.output_dir) / "index"
        self.engines = dict(engines or {})
        self._index: TemplateIndex | ShardedTemplateIndex | None = None
        self.index_key = ""

    def backend(self, stage: GenerativeStage, prompt_version: str) -> Backend:
        """The engine serving `stage`, behind the request cache under a namespace naming stage and prompt."""
        if stage in self.engines:
            return self.engines[stage]
        return self.backends.get(self.config.backend_for(stage), f"{stage}/{prompt_version}")

    @cached_property
    def embedder(self) -> Embedder:
        from fineinstructions.backends.embeddings import make_embedder

        mc = self.config.match
        return make_embedder(mc.embedder, device=mc.embedder_device, batch_size=mc.embedder_batch_size,
                             revision=mc.embedder_revision)

    def use_index(self, index: TemplateIndex | ShardedTemplateIndex, key: str) -> None:
        """Serve this index (just built or loaded by the pipeline), named by `key`, to the match stage."""
        self._index, self.index_key = index, key

    @property
    def index(self) -> TemplateIndex | ShardedTemplateIndex:
        if self._index is None:
            from fineinstructions.stages.index import TemplateIndex

            mc = self.config.match
            self._index = TemplateIndex.load(self.index_dir, self.embedder, nprobe=mc.nprobe,
                                             ef_search=mc.ef_search, refine_k_factor=mc.refine_k_factor)
            stamp = RunFolder(self.index_dir.parent).index_stamp
            if not self.index_key and stamp.is_file():
                self.index_key = stamp.read_text().strip()
        return self._index

    @cached_property
    def hub_bias(self) -> np.ndarray | None:
        """The match stage's hub bias for this index (stages/hubness.py) when `match.hub_damping` is on: the one
        the pipeline stored beside the index, else computed here."""
        if not self.config.match.hub_damping:
            return None
        from fineinstructions.stages.hubness import stored_or_computed_bias

        index = self.index
        return stored_or_computed_bias(self.config, index, self.embedder, self.index_dir, self.index_key)

    def close(self) -> None:
        self.backends.close()


def worker_context(spec: StageSpec) -> StageContext:
    """The context of a worker process (a Ray actor) running `spec`: its own engines, behind the run's request
    cache when the config keeps one, and the index saved in the run folder."""
    from fineinstructions.backends.cache import RequestCache
    from fineinstructions.io.run_folder import RunFolder

    folder = RunFolder(spec.config.run.output_dir)
    cache = RequestCache(folder.request_cache) if spec.config.run.request_cache else None
    return StageContext(spec.config, spec.fingerprint, BackendPool(cache), index_dir=folder.index)

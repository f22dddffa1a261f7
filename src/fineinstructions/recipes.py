"""Picklable recipes for the pipeline's model stages, built where they run: this process or a Ray actor.

A recipe carries the whole config, so a worker on another machine builds the same stage with its own
engine; the engine sits behind the run's request cache under a namespace naming the stage and its prompt
version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fineinstructions.backends.cache import RequestCache
from fineinstructions.backends.factory import BackendPool
from fineinstructions.config import PipelineConfig
from fineinstructions.records import Document, Match, Pair, Query, Record, Template
from fineinstructions.stages.base import Stage

ModelStage = Literal["templatize", "match", "instantiate", "judge"]


@dataclass(frozen=True)
class StageRecipe:
    """How to build one model stage of a run."""

    stage: ModelStage
    config: PipelineConfig
    fingerprint: str

    @property
    def input_type(self) -> type[Record]:
        return {"templatize": Query, "match": Document, "instantiate": Match, "judge": Pair}[self.stage]

    @property
    def output_type(self) -> type[Record]:
        return {"templatize": Template, "match": Match, "instantiate": Pair, "judge": Pair}[self.stage]

    def new_pool(self) -> BackendPool:
        """A backend pool for a worker, sharing the run's request cache when the config keeps one."""
        run = self.config.run
        cache = RequestCache(request_cache_path(run.output_dir)) if run.request_cache else None
        return BackendPool(cache)

    def build(self, backends: BackendPool) -> Stage:
        cfg = self.config
        if self.stage == "templatize":
            from fineinstructions.stages.templatize import TemplatizeStage

            tc = cfg.templatize
            return TemplatizeStage(backends.get(cfg.backend_for("templatize"), f"templatize/{tc.prompt_version}"),
                                   tc.prompt_version, tc.max_tokens, tc.temperature, cfg.run.seed, tc.retries,
                                   tc.retry_temperature, tc.min_intent_overlap)
        if self.stage == "match":
            return self._match_stage()
        if self.stage == "instantiate":
            from fineinstructions.stages.instantiate import InstantiateStage

            ic = cfg.instantiate
            return InstantiateStage(backends.get(cfg.backend_for("instantiate"), f"instantiate/{ic.prompt_version}"),
                                    ic.prompt_version, ic.max_tokens, ic.temperature, cfg.run.seed, ic.min_coverage,
                                    self.fingerprint, ic.min_copy_words, ic.min_answer_words, ic.max_answer_chars,
                                    ic.max_prompt_document_chars, ic.constrained, ic.min_instance_share,
                                    ic.max_instance_length_ratio)
        from fineinstructions.stages.judge import JudgeStage

        jc = cfg.judge
        return JudgeStage(backends.get(cfg.backend_for("judge"), f"judge/{jc.prompt_version}"),
                          jc.prompt_version, jc.max_tokens, jc.temperature, cfg.run.seed)


    def _match_stage(self) -> Stage:
        """Matching without a corpus-wide cap (shards independent): the index is broadcast through the run
        folder, each worker maps the saved index and embeds its own documents."""
        from fineinstructions.backends.embeddings import Embedder
        from fineinstructions.stages.index import TemplateIndex
        from fineinstructions.stages.match import MatchStage

        mc = self.config.match
        if mc.max_template_uses is not None:
            raise ValueError("matching with a corpus-wide template cap runs shard after shard, not on workers")
        embedder = Embedder(mc.embedder, device=mc.embedder_device, batch_size=mc.embedder_batch_size,
                                      revision=mc.embedder_revision)
        index = TemplateIndex.load(Path(self.config.run.output_dir) / "index", embedder, nprobe=mc.nprobe,
                                   ef_search=mc.ef_search, refine_k_factor=mc.refine_k_factor)
        return MatchStage(index, embedder, mc.top_k, mc.coverage_chunks, mc.sigma, mc.alpha, mc.min_score,
                          mc.per_vector_k, mc.mmr_lambda, None, mc.popularity_weight, mc.max_windows,
                          mc.min_document_words, mc.max_document_chars)


def request_cache_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "cache" / "requests.sqlite"

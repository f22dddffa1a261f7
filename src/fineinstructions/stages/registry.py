"""Every stage by name, in pipeline order, and the small picklable spec an executor receives.

    queries --query_filter--> --templatize--> --template_dedup--> templates --(index)-->
    documents --match--> --instantiate--> --judge--> --filter--> dataset

Adding a stage: write its class (with `from_config`), give it a config section, and list it here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fineinstructions.backends.auto import resolved_kind
from fineinstructions.errors import ConfigError

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.base import Stage
    from fineinstructions.stages.context import StageContext

# name -> "module:Class", imported on first use (match pulls in FAISS, the model stages their prompts).
STAGES: dict[str, str] = {
    "query_filter": "fineinstructions.stages.query_filter:QueryFilterStage",
    "templatize": "fineinstructions.stages.templatize:TemplatizeStage",
    "template_dedup": "fineinstructions.stages.template_dedup:TemplateDedupStage",
    "match": "fineinstructions.stages.match:MatchStage",
    "instantiate": "fineinstructions.stages.instantiate:InstantiateStage",
    "judge": "fineinstructions.stages.judge:JudgeStage",
    "filter": "fineinstructions.stages.filter:FilterStage",
}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)
# The baseline recipes (documents -> synthetic training text), each a run's only document stage when chosen.
RECIPE_STAGES: dict[str, str] = {
    "wrap": "fineinstructions.stages.wrap:WrapStage",
    "nemotron_qa": "fineinstructions.stages.nemotron_qa:NemotronQAStage",
    "ipt": "fineinstructions.stages.ipt:IPTStage",
}
GENERATIVE_STAGES = frozenset({"templatize", "instantiate", "judge", *RECIPE_STAGES})
CONCURRENT_ENGINES = frozenset({"vllm", "openai", "transformers"})  # engines that batch requests in flight


def stage_class(name: str) -> type[Stage[Any, Any]]:
    """The stage class registered as `name`."""
    known = STAGES | RECIPE_STAGES
    if name not in known:
        raise ConfigError(f"unknown stage {name!r}: one of {', '.join(known)}")
    module, _, attr = known[name].partition(":")
    cls: type[Stage[Any, Any]] = getattr(importlib.import_module(module), attr)
    return cls


@dataclass(frozen=True)
class StageSpec:
    """All an executor receives to run a stage anywhere: which stage, the run's config and fingerprint, and
    the folder its shards are committed to."""

    stage: str
    config: PipelineConfig
    fingerprint: str
    out_dir: str

    @property
    def stage_class(self) -> type[Stage[Any, Any]]:
        return stage_class(self.stage)

    @property
    def sequential(self) -> bool:
        """Shards depend on earlier ones: one instance runs them in order (in the driver)."""
        return self.stage_class.sequential(self.config)

    @property
    def feed_size(self) -> int:
        """Rows per call of the stage. A model stage whose engine runs concurrent requests itself (vLLM, an
        OpenAI-compatible server, transformers) gets `run.requests_in_flight` rows a call, so the engine's
        scheduler always holds a full queue rather than draining every `batch_size` requests; an engine that
        runs one request at a time (llama.cpp) gets `run.batch_size` rows (a killed run loses one call)."""
        run = self.config.run
        if self.stage in GENERATIVE_STAGES and \
                resolved_kind(self.config.backend_for(self.stage).kind) in CONCURRENT_ENGINES:  # type: ignore[arg-type]
            return max(run.batch_size, run.requests_in_flight)
        return run.batch_size

    def build(self, context: StageContext) -> Stage[Any, Any]:
        return self.stage_class.from_config(self.config, context)

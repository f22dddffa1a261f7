"""Versioned prompt files, each with its few-shot examples, turned into chat conversations."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fineinstructions.backends.base import Conversation, schema_text
from fineinstructions.contracts.templates import FieldGuard
from fineinstructions.errors import FineInstructionsError


class PromptError(FineInstructionsError, FileNotFoundError):
    """A prompt file that is missing or does not fit its stage."""


DEFAULT_VERSIONS = {"templatize": "v2", "instantiate": "v2", "judge": "v2", "wrap_easy": "v1", "wrap_medium": "v1",
                    "wrap_hard": "v1", "wrap_qa": "v1", "nemotron_qa": "v1", "ipt": "v1"}


@dataclass(frozen=True)
class Prompt:
    """A system message, a user-message pattern with `{field}` slots, and few-shot examples.

    A prompt with `user_json` (JSON key -> field name) renders the user message as that JSON object
    instead, the input contract of the released FineInstructions models.

    `grammar` (GBNF) and `json_schema` (a YAML mapping in the file, kept as `schema_text`) describe the reply
    for structured decoding; neither changes the conversation, the version or any request sent without them.
    """

    name: str
    version: str
    system: str
    user: str
    examples: tuple[tuple[dict[str, str], str], ...] = field(default_factory=tuple)
    user_json: tuple[tuple[str, str], ...] = ()
    grammar: str | None = None  # optional GBNF of the reply, for constrained decoding
    json_schema: str | None = None  # optional JSON schema of the reply (schema_text), for structured decoding

    @cached_property
    def field_guard(self) -> FieldGuard:
        """Neutralises this prompt's own labels and tags in text put into its fields (a JSON user message
        escapes everything itself, so it needs none)."""
        return FieldGuard((), ()) if self.user_json else FieldGuard.of(self.system, self.user)

    def render_user(self, **fields: str) -> str:
        if self.user_json:
            return json.dumps({key: fields[name] for key, name in self.user_json}, ensure_ascii=False)
        return self.user.format(**fields).strip()

    def conversation(self, **fields: str) -> Conversation:
        """System message, each example as a user/assistant turn, then the request itself.

        Everything before the last user message is identical for every call, so engines with prefix
        caching compute it once.
        """
        messages: Conversation = [{"role": "system", "content": self.system.strip()}] if self.system.strip() else []
        for example_input, example_output in self.examples:
            messages.append({"role": "user", "content": self.render_user(**example_input)})
            messages.append({"role": "assistant", "content": example_output.strip()})
        messages.append({"role": "user", "content": self.render_user(**fields)})
        return messages


# The fields each stage fills in its prompt's user message.
STAGE_FIELDS = {"templatize": frozenset({"query"}), "instantiate": frozenset({"document", "template"}),
                "judge": frozenset({"document", "instruction", "answer"}),
                "wrap_easy": frozenset({"text"}), "wrap_medium": frozenset({"text"}), "wrap_hard": frozenset({"text"}),
                "wrap_qa": frozenset({"text"}), "nemotron_qa": frozenset({"document"}), "ipt": frozenset({"text"}),
                "reference": frozenset({"instruction", "reference", "response"})}


def load_prompt(name: str, version: str | None = None, path: str | None = None) -> Prompt:
    """Load `prompts/{name}.{version}.yaml` from the package, or the prompt file at `path` (a prompt of your
    own, in the same layout, read anew each time: edits are seen); either is checked against the fields the
    stage `name` fills."""
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise PromptError(f"no prompt file {path}")
        return _parsed(file.read_text(encoding="utf-8"), name, str(file))
    version = version or DEFAULT_VERSIONS[name]
    resource = resources.files(__package__).joinpath(f"{name}.{version}.yaml")
    if not resource.is_file():
        raise PromptError(f"no prompt file {name}.{version}.yaml")
    return _parsed(resource.read_text(encoding="utf-8"), name, f"{name}.{version}.yaml")


@cache
def _parsed(text: str, stage: str, where: str) -> Prompt:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PromptError(f"prompt file {where} is not valid YAML: {err}") from err
    return _prompt(raw, stage, where)


def _prompt(raw: Any, stage: str, where: str) -> Prompt:
    """A Prompt from a parsed prompt file, refused (PromptError) when it does not fit the stage."""
    if not isinstance(raw, dict):
        raise PromptError(f"prompt file {where} must be a YAML mapping")
    missing = [key for key in ("name", "version", "system") if key not in raw]
    if missing:
        raise PromptError(f"prompt file {where} lacks {', '.join(missing)}")
    if raw["name"] != stage:
        raise PromptError(f"prompt file {where} is a {raw['name']!r} prompt, not one for the {stage!r} stage")
    try:
        examples = tuple((dict(e["input"]), str(e["output"])) for e in raw.get("examples") or [])
    except (KeyError, TypeError, ValueError) as err:
        raise PromptError(f"prompt file {where}: each example needs an `input` mapping and an `output`") from err
    user_json = tuple((str(k), str(v)) for k, v in (raw.get("user_json") or {}).items())
    schema = raw.get("json_schema")
    if schema is not None and not (isinstance(schema, dict) and schema):
        raise PromptError(f"prompt file {where}: `json_schema` must be a mapping (a JSON schema of the reply)")
    prompt = Prompt(raw["name"], str(raw["version"]), raw["system"] or "", raw.get("user") or "", examples, user_json,
                    raw.get("grammar"), schema_text(schema) if schema else None)
    fields = STAGE_FIELDS.get(stage)
    if fields is not None:
        used = {v for _, v in user_json} if user_json else {
            f for _, f, _, _ in string.Formatter().parse(prompt.user) if f is not None}
        unknown = used - fields
        if unknown or not used:
            raise PromptError(f"prompt file {where}: the user message may use {sorted(fields)}, "
                              f"it uses {sorted(used) or 'none'}")
        for example_input, _ in examples:
            if set(example_input) != fields:
                raise PromptError(f"prompt file {where}: an example's input has {sorted(example_input)}, "
                                  f"the stage fills {sorted(fields)}")
    return prompt

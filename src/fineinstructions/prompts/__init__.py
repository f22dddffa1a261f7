"""Versioned prompt files, each with its few-shot examples, turned into chat conversations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from typing import Any

import yaml

from fineinstructions.backends.base import Conversation
from fineinstructions.contracts.templates import FieldGuard

DEFAULT_VERSIONS = {"templatize": "v2", "instantiate": "v2", "judge": "v2"}


@dataclass(frozen=True)
class Prompt:
    """A system message, a user-message pattern with `{field}` slots, and few-shot examples.

    A prompt with `user_json` (JSON key -> field name) renders the user message as that JSON object
    instead, the input contract of the released FineInstructions models.
    """

    name: str
    version: str
    system: str
    user: str
    examples: tuple[tuple[dict[str, str], str], ...] = field(default_factory=tuple)
    user_json: tuple[tuple[str, str], ...] = ()
    grammar: str | None = None  # optional GBNF of the reply, for constrained decoding

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


@cache
def load_prompt(name: str, version: str | None = None) -> Prompt:
    """Load `prompts/{name}.{version}.yaml` from the package."""
    version = version or DEFAULT_VERSIONS[name]
    resource = resources.files(__package__).joinpath(f"{name}.{version}.yaml")
    if not resource.is_file():
        raise FileNotFoundError(f"no prompt file {name}.{version}.yaml")
    raw: dict[str, Any] = yaml.safe_load(resource.read_text(encoding="utf-8"))
    examples = tuple((dict(e["input"]), str(e["output"])) for e in raw.get("examples") or [])
    user_json = tuple((str(k), str(v)) for k, v in (raw.get("user_json") or {}).items())
    return Prompt(raw["name"], raw["version"], raw["system"] or "", raw.get("user") or "", examples, user_json,
                  raw.get("grammar"))

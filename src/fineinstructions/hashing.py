"""Short content hashes: the one way this project names what a file, a config or a shard was made from."""

from __future__ import annotations

import hashlib
import json
from typing import Any

SHORT = 16  # hex digits: 64 bits, ample for telling configurations and inputs apart


def short_hash(data: str | bytes, length: int = SHORT) -> str:
    """The first `length` hex digits of the SHA-256 of `data` (text is hashed as UTF-8)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:length]


def json_hash(value: Any, length: int = SHORT) -> str:
    """`short_hash` of `value` as canonical JSON (sorted keys; non-JSON values by their str)."""
    return short_hash(json.dumps(value, sort_keys=True, default=str), length)

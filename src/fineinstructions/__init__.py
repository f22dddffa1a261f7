"""FineInstructions: real user queries become templates, templates are matched to documents, a model
instantiates them into grounded instruction-answer pairs, a judge keeps the good ones.

The Python API (`run`, `run_stage`, `load_config`) lives in `fineinstructions.api` and is imported on
first use, so `import fineinstructions` stays light.
"""

from __future__ import annotations

from typing import Any

_API = ("run", "run_stage", "load_config", "StageOutput", "close")


def __getattr__(name: str) -> Any:
    if name in _API:
        from fineinstructions import api

        return getattr(api, name)
    raise AttributeError(f"module 'fineinstructions' has no attribute {name!r}")


__all__ = list(_API)

"""The one root of expected failures.

Bad input, a config that cannot be used, a run folder that is in use or holds another run, an index built
by another model: each is a `FineInstructionsError` with a message that says what to do. The CLI prints
those messages and exits 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class FineInstructionsError(Exception):
    """An expected failure with a message meant for the user (never a bug)."""


class ConfigError(FineInstructionsError):
    """A configuration (YAML, `--set` override or stage flags) that cannot be used as given."""


class ConfigChanged(FineInstructionsError):
    """A folder holds a run made with another configuration (refused unless the caller forces it)."""

"""The scripted test backend as a `custom` backend factory, so processes and Ray actors can build it."""

from __future__ import annotations

from fineinstructions.backends.fake import FakeBackend
from tests.test_pipeline import scripted


def make() -> FakeBackend:
    return FakeBackend(scripted, model_id="scripted")

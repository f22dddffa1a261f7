"""Building backends from config: custom factories, and one engine per config behind the request cache."""

from __future__ import annotations

import pytest

from fineinstructions.backends.cache import CachedBackend, RequestCache
from fineinstructions.backends.factory import BackendPool, create_backend
from fineinstructions.config import BackendConfig
from fineinstructions.errors import ConfigError


def test_custom_backend_is_built_from_its_factory():
    backend = create_backend(BackendConfig(kind="custom", model="tests.scripted_backend:make"))
    assert backend.model_id == "scripted"


@pytest.mark.parametrize("spec,message", [
    ("no_colon", "package.module:factory"),
    ("tests.missing_module:make", "cannot load custom backend"),
    ("tests.scripted_backend:missing", "cannot load custom backend"),
])
def test_bad_custom_backend_names_are_clear_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        create_backend(BackendConfig(kind="custom", model=spec))


def test_a_factory_that_returns_no_backend_is_refused():
    with pytest.raises(ConfigError, match="lacks the Backend methods"):
        create_backend(BackendConfig(kind="custom", model="builtins:object"))


def test_pool_shares_one_engine_and_wraps_it_per_namespace(tmp_path):
    pool = BackendPool(RequestCache(tmp_path / "cache.sqlite"))
    config = BackendConfig(kind="custom", model="tests.scripted_backend:make")
    instantiate, judge = pool.get(config, "instantiate/v2"), pool.get(config, "judge/v2")
    assert isinstance(instantiate, CachedBackend) and isinstance(judge, CachedBackend)
    assert instantiate.backend is judge.backend is pool.get(config)
    assert pool.get(config, "judge/v2") is judge
    pool.close()

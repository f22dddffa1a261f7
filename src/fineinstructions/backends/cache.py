"""A per-request cache of finished model calls, so a resumed or re-configured run never pays for one twice.

A request's key is the hash of the model, the whole conversation (the rendered prompt, few-shot examples
included), the sampling settings and a namespace naming the stage and its prompt version. The driver's
stages keep one SQLite file (WAL mode: several processes on one machine, e.g. Ray actors, may share it);
each rank keeps its own file, written by that rank alone, in the classic rollback-journal mode, which
(unlike WAL's shared memory) works on a network filesystem such as a cluster's NFS run folder. Each batch's
answers are committed as soon as the engine returns them, so a run killed mid-shard loses at
most the batch in flight. Failed requests are never cached: they are retried on the next run.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fineinstructions.backends.base import Backend, BackendStats, Conversation, Generation, SamplingParams


def request_key(model_id: str, conversation: Conversation, sampling: SamplingParams, namespace: str = "") -> str:
    """The cache key of one request: everything that can change the engine's answer."""
    payload = json.dumps([model_id, namespace, sampling.fingerprint(), conversation], sort_keys=True,
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class RequestCache:
    """Finished generations by request key, in one SQLite file; `shared`: several processes write it (WAL)."""

    def __init__(self, path: str | Path, shared: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        self._db.execute(f"PRAGMA journal_mode={'WAL' if shared else 'DELETE'}")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, text TEXT NOT NULL, prompt_tokens INTEGER,"
            " completion_tokens INTEGER, finish_reason TEXT, seconds REAL, created REAL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT key, text, prompt_tokens, completion_tokens, finish_reason, seconds FROM requests"
                    f" WHERE key IN ({marks})", chunk).fetchall()
                for key, text, prompt_tokens, completion_tokens, finish_reason, seconds in rows:
                    found[key] = Generation(text, prompt_tokens, completion_tokens, finish_reason, None, seconds)
        return found

    def put_many(self, items: Sequence[tuple[str, Generation]]) -> None:
        """Store successful generations (one transaction); failures are skipped."""
        rows = [(key, g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason, g.seconds, time.time())
                for key, g in items if g.ok]
        if not rows:
            return
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedBackend:
    """Serves a backend's requests from a RequestCache; only the misses reach the engine.

    `stats` counts what the engine really did (cached answers cost nothing); `stats.extra` holds
    `cache_hits` and `cache_misses` beside the engine's own counters.
    """

    def __init__(self, backend: Backend, cache: RequestCache, namespace: str = ""):
        self.backend = backend
        self.cache = cache
        self.namespace = namespace
        self.model_id = backend.model_id
        self.stats = BackendStats()

    def generate(self, conversations: Sequence[Conversation], sampling: SamplingParams) -> list[Generation]:
        keys = [request_key(self.model_id, conv, sampling, self.namespace) for conv in conversations]
        hits = self.cache.get_many(keys)
        misses = [i for i, key in enumerate(keys) if key not in hits]
        extra = self.stats.extra
        extra["cache_hits"] = extra.get("cache_hits", 0) + len(keys) - len(misses)
        extra["cache_misses"] = extra.get("cache_misses", 0) + len(misses)
        out: list[Generation | None] = [hits.get(key) for key in keys]
        if misses:
            engine = self.backend.stats
            retries, counters = engine.retries, dict(engine.extra)
            start = time.perf_counter()
            fresh = self.backend.generate([conversations[i] for i in misses], sampling)
            self.stats.add(fresh, time.perf_counter() - start)
            # The engine's own counters (retries, throttling, restarts) show through: what this call added.
            self.stats.retries += engine.retries - retries
            for key, value in engine.extra.items():
                extra[key] = extra.get(key, 0) + value - counters.get(key, 0)
            self.cache.put_many([(keys[i], g) for i, g in zip(misses, fresh, strict=True)])
            for i, generation in zip(misses, fresh, strict=True):
                out[i] = generation
        return [g for g in out if g is not None]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.backend.count_tokens(texts)

    def close(self) -> None:
        """The wrapped engine is owned by whoever built it; the cache by the run."""

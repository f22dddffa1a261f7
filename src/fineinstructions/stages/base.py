"""What every stage is: a small unit that turns a batch of records into a batch of records.

A stage declares its name, its input and output record types and how it must be fed, and builds itself
from its own config section (`from_config`), taking engines and the index from a `StageContext`. It knows
nothing about which executor runs it or which backend serves it, and reports what it kept, what it
dropped and why. A stage whose output depends on earlier shards (the corpus-wide template cap, pair
dedup) says so (`sequential`) and owns that state behind two hooks: `state_digest` (what it carries into
the next shard) and `after_shard` (each shard's outputs, in order, computed or read back on resume).
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from fineinstructions.backends.base import Backend, BackendStats
from fineinstructions.records import Record

if TYPE_CHECKING:
    from fineinstructions.config import PipelineConfig
    from fineinstructions.stages.context import StageContext

In = TypeVar("In", bound=Record)
Out = TypeVar("Out", bound=Record)


@dataclass
class Rejected:
    """A record (as a plain row) that a stage dropped, with the named reason."""

    row: dict[str, Any]
    reason: str


@dataclass
class StageResult(Generic[Out]):
    records: list[Out]
    rejected: list[Rejected] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)  # stage-specific counts, summed into metrics


# Backend stats that are levels, not counts: a difference of two readings means nothing.
BACKEND_GAUGES = frozenset({"concurrency", "concurrency_min", "breaker_open"})


@dataclass
class StageStats:
    """Counts, drop reasons, time and tokens for one stage, mergeable across batches and shards."""

    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    requests: int = 0
    failed_requests: int = 0
    engine_failures: int = 0  # failed requests a rerun retries (the engine's fault, not the row's)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # sums, e.g. "coverage_sum"
    backend: dict[str, float] = field(default_factory=dict)  # engine-side counts: retries, cache hits, restarts

    def add_result(self, batch_size: int, result: StageResult, seconds: float) -> None:
        self.rows_in += batch_size
        self.rows_out += len(result.records)
        self.dropped.update(r.reason.split(":")[0] for r in result.rejected)
        self.seconds += seconds

    def add_backend_delta(self, before: BackendStats, after: BackendStats) -> None:
        self.requests += after.requests - before.requests
        self.failed_requests += after.failures - before.failures
        self.engine_failures += after.engine_failures - before.engine_failures
        self.prompt_tokens += after.prompt_tokens - before.prompt_tokens
        self.completion_tokens += after.completion_tokens - before.completion_tokens
        counts = {"retries": after.retries - before.retries} | {
            key: value - before.extra.get(key, 0) for key, value in after.extra.items() if key not in BACKEND_GAUGES}
        for key, delta in counts.items():
            if delta:
                self.backend[key] = self.backend.get(key, 0) + delta

    def merge(self, other: StageStats) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.dropped.update(other.dropped)
        self.seconds += other.seconds
        self.requests += other.requests
        self.failed_requests += other.failed_requests
        self.engine_failures += other.engine_failures
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        for key, value in other.metrics.items():
            self.metrics[key] = self.metrics.get(key, 0.0) + value
        for key, value in other.backend.items():
            self.backend[key] = self.backend.get(key, 0) + value

    @property
    def completion_tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(sorted(self.dropped.items(), key=lambda kv: -kv[1])),
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "engine_failures": self.engine_failures,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "completion_tokens_per_s": round(self.completion_tokens_per_s, 2),
            "metrics": self.metrics,
            "backend": self.backend,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageStats:
        return cls(
            rows_in=data["rows_in"], rows_out=data["rows_out"], dropped=Counter(data["dropped"]),
            seconds=data["seconds"], requests=data["requests"], failed_requests=data["failed_requests"],
            engine_failures=data.get("engine_failures", 0), prompt_tokens=data["prompt_tokens"],
            completion_tokens=data["completion_tokens"],
            metrics=dict(data.get("metrics", {})), backend=dict(data.get("backend", {})),
        )


class Stage(ABC, Generic[In, Out]):
    """Turns a batch of `input_type` records into `output_type` records plus rejections."""

    name: ClassVar[str]
    input_type: ClassVar[type[Record]]
    output_type: ClassVar[type[Record]]
    whole_shard: ClassVar[bool] = False  # sees each shard as one batch (it groups or compares across rows)
    holds_model: ClassVar[bool] = False  # serves a generative model: worth spreading over workers
    backend: Backend | None = None

    @classmethod
    @abstractmethod
    def from_config(cls, config: PipelineConfig, context: StageContext) -> Self:
        """The stage as `config` (its own section) describes it, with engines and the index from `context`."""

    @classmethod
    def sequential(cls, config: PipelineConfig) -> bool:
        """Whether a shard's output depends on earlier shards: then one instance runs them in order."""
        return False

    def state_digest(self) -> str:
        """What this stage carries over from earlier shards, as a digest stored with each shard's output."""
        return ""

    def after_shard(self, outputs: Sequence[Out]) -> None:
        """Called with every shard's outputs in shard order, computed or read back (state across shards)."""

    @abstractmethod
    def process(self, batch: Sequence[In]) -> StageResult[Out]: ...

    def metrics(self, result: StageResult[Out]) -> dict[str, float]:
        """Quality sums the summary reports (override per stage)."""
        return {}

    def run_batch(self, batch: Sequence[In], stats: StageStats) -> StageResult[Out]:
        """Process one batch and account for it in `stats`."""
        before = _copy_backend_stats(self.backend)
        start = time.perf_counter()
        result = self.process(batch)
        stats.add_result(len(batch), result, time.perf_counter() - start)
        if self.backend is not None and before is not None:
            stats.add_backend_delta(before, self.backend.stats)
        for key, value in (self.metrics(result) | result.counters).items():
            stats.metrics[key] = stats.metrics.get(key, 0.0) + value
        return result


def document_major(records: Sequence[Any]) -> list[Any]:
    """Records of one document back to back: documents in first-seen order, within one by `rank` when the
    records have it. An engine then reuses each document's prompt prefix across its requests."""
    first_seen: dict[str, int] = {}
    for i, record in enumerate(records):
        first_seen.setdefault(record.document_id, i)
    return sorted(records, key=lambda r: (first_seen[r.document_id], getattr(r, "rank", 0)))


def _copy_backend_stats(backend: Backend | None) -> BackendStats | None:
    return None if backend is None else dataclasses.replace(backend.stats, extra=dict(backend.stats.extra))

"""The demo job with the scripted engine gives the same rows, shard for shard, as before stages built
themselves: tests/data/demo_scripted_golden.json holds the digests of every stage's shard files and of the
dataset rows, recorded by this same procedure at commit abd2e64, in one shard and in several (since the document phase
runs in ranks, its stage shards are found in rank-00000/ and the dataset in rank-00000/part-N.parquet).

One deliberate change since: pair dedup left the filter for its own step after it (across ranks, on
signatures), so the filter no longer skips a duplicate before spending a document's token budget; the
filter shards and the dataset digests were re-recorded for that (git log of this file says when).

Re-recorded again, deliberately, for the paper's matching defaults and the stricter gates: templatize refuses a
variable that copies the query's own value (`specific_variable`: 18 -> 17 templates); match uses one global + 5
local vectors (was 10), samples among its candidates by template complexity, embeds each template's words with
its description (`match.template_text: both`) and damps hub templates (`match.hub_damping`); the filter carries
a document's unused token budget over to the next documents of its shard (the carry starts at 0 in each shard,
so shard sizes may keep different pairs: 51 rows in one shard, 50 in shards of 4; the hub bias comes from the
demo's own 12 leads). The job runs without the packaged bank (`bank=None`), so that the digests follow the
stages, not the bank's contents."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.config import demo_config
from fineinstructions.pipeline import Pipeline
from tests.test_pipeline import scripted

GOLDEN = json.loads((Path(__file__).parent / "data" / "demo_scripted_golden.json").read_text())
DATASET_FIELDS = ("document_id", "template_id", "instantiated_instruction", "answer", "judge_score",
                  "excerpt_coverage")


def judge_passes(conversation) -> str:
    if conversation[0]["content"].startswith("You are a strict judge"):
        return "<feedback>Grounded and responsive.</feedback><score>5</score>"
    return scripted(conversation)


def rounded(value):
    """Floats to 4 decimals: similarity scores move in the last bits with torch's thread count."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def digest(rows: list) -> str:
    return hashlib.sha256(json.dumps(rounded(rows), sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.mark.parametrize("shard_size", [64, 4])
def test_demo_job_with_the_scripted_engine_gives_todays_rows(tmp_path, shard_size):
    cfg = demo_config(str(tmp_path / "run"), bank=None)  # the job as it was before the packaged bank joined it
    cfg.run.shard_size = shard_size
    pipeline = Pipeline(cfg, show_progress=False)
    pipeline.backends.register(cfg.generator, FakeBackend(judge_passes, model_id="scripted"))
    pipeline.run()
    out = tmp_path / "run"
    # Stage shards by stage and number (the document stages' now sit in rank-00000/, named with six digits).
    files = [*(out / "work").glob("*/shard-*.parquet"), *(out / "work").glob("*/rank-00000/shard-*.parquet")]
    files = [p for p in files if "signatures" not in p.parts]
    stage = {p: p.parent.parent.name if p.parent.name.startswith("rank-") else p.parent.name for p in files}
    shards = {f"{stage[p]}/shard-{int(p.stem.split('-')[1]):05d}.parquet":
              [pq.read_metadata(p).num_rows, digest(pq.read_table(p).to_pylist())] for p in sorted(files)}
    dataset = [{k: row[k] for k in DATASET_FIELDS} for part in sorted((out / "dataset").glob("rank-*/part-*.parquet"))
               for row in pq.read_table(part).to_pylist()]
    golden = GOLDEN[str(shard_size)]
    assert shards == golden["shards"]
    assert len(dataset) == golden["dataset_rows"] and digest(dataset) == golden["dataset_sha"]

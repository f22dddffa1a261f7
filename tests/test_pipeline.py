"""End to end: the whole pipeline on real embeddings, with a scripted backend and with the real 135M model."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from fineinstructions.backends.fake import FakeBackend
from fineinstructions.config import BackendConfig, PipelineConfig, RunConfig, SourceConfig
from fineinstructions.contracts.excerpts import expand_excerpts
from fineinstructions.errors import ConfigChanged
from fineinstructions.io.writers import read_records
from fineinstructions.pipeline import Pipeline
from fineinstructions.records import Match, Pair, Template

DOCUMENTS = [
    ("acid", "Acid rain is rain or any other form of precipitation that is unusually acidic. It can have harmful "
             "effects on plants, aquatic animals and infrastructure. Acid rain is caused by emissions of sulfur "
             "dioxide and nitrogen oxide, which react with the water molecules in the atmosphere to produce acids. "
             "Some governments have made efforts since the 1970s to reduce the release of sulfur dioxide."),
    ("denmark", "Denmark is a Nordic country in Northern Europe. It is the most populous and politically central "
                "constituent of the Kingdom of Denmark, a constitutionally unitary state that includes the "
                "autonomous territories of the Faroe Islands and Greenland in the North Atlantic Ocean. Denmark "
                "has a population of about six million people, most of whom live in cities."),
    ("empty", "   "),
    ("fluid", "In physics, fluid dynamics is a subdiscipline of fluid mechanics that describes the flow of fluids, "
              "liquids and gases. It has several subdisciplines, including aerodynamics, the study of air and "
              "other gases in motion, and hydrodynamics, the study of water and other liquids in motion. Fluid "
              "dynamics has a wide range of applications, including calculating forces on aircraft."),
]
QUERIES = ["What is acid rain?", "Where is Denmark located?", "Explain fluid dynamics.",
           "What causes acid rain?", "Tell me a joke please", "What is the population of Denmark?"]


def scripted(conversation) -> str:
    """A deterministic stand-in for the model that follows each prompt's output contract."""
    system, user = conversation[0]["content"], conversation[-1]["content"]
    if system.startswith("You turn a real user query"):
        query = user.removeprefix("Query: ").strip()
        if "joke" in query:
            return "Sure, here is a joke!"
        words = query.rstrip("?.").split()
        return json.dumps({"template": " ".join(words[:-1]) + f" <fi>{words[-1]} or similar topic</fi>?",
                           "compatible_document_description": f"An encyclopedia article about {words[-1]}."})
    if system.startswith(("You write one instruction", "You turn an instruction TEMPLATE")):
        document = user.split("DOCUMENT:\n", 1)[1].split("\n\nTEMPLATE:", 1)[0]
        template = user.split("TEMPLATE:\n", 1)[1]
        sentence = re.split(r"(?<=\.)\s", document)[0].split()
        instruction = re.sub(r"<fi>.*?</fi>", sentence[0], template)
        return (f"<instruction>{instruction}</instruction>\n<answer><excerpt>{' '.join(sentence[:3])}<...>"
                f"{' '.join(sentence[-3:])}</excerpt></answer>")
    if system.startswith("You are a strict judge"):
        return "<feedback>Fine.</feedback><score>5</score>" if "Acid" in user or "Denmark" in user \
            else "<feedback>Weak.</feedback><score>2</score>"
    raise AssertionError(system[:40])


def write_inputs(tmp_path):
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"text": q, "id": f"q{i}"}) + "\n" for i, q in enumerate(QUERIES))
                       + "{not json\n" + json.dumps({"text": "what is acid rain", "id": "dup"}) + "\n")
    documents = tmp_path / "documents.jsonl"
    documents.write_text("".join(json.dumps({"id": i, "text": t, "title": i}) + "\n" for i, t in DOCUMENTS))
    return queries, documents


def config_for(tmp_path, out="run", shard_size=2, top_k=2) -> PipelineConfig:
    queries, documents = write_inputs(tmp_path)
    cfg = PipelineConfig(
        queries=SourceConfig(path=str(queries)),
        documents=SourceConfig(path=str(documents)),
        generator=BackendConfig(model="scripted"),
        run=RunConfig(output_dir=str(tmp_path / out), shard_size=shard_size, batch_size=2),
    )
    cfg.match.top_k = top_k
    return cfg


def run_scripted(cfg: PipelineConfig, responder=scripted, force=False):
    pipeline = Pipeline(cfg, show_progress=False, force=force)
    backend = FakeBackend(responder, model_id="scripted")
    pipeline.backends.register(cfg.generator, backend)
    return pipeline.run(), backend


def dataset_rows(cfg):
    return sorted((p.document_id, p.template_id, p.answer) for p in read_records(f"{cfg.run.output_dir}/dataset", Pair))


def test_end_to_end_schema_invariants_and_summary(tmp_path):
    cfg = config_for(tmp_path)
    summary, _ = run_scripted(cfg)
    files = sorted((tmp_path / "run" / "dataset").glob("rank-*/part-*.parquet"))
    assert [f.relative_to(tmp_path / "run" / "dataset").as_posix() for f in files] == ["rank-00000/part-000000.parquet"]
    for file in files:
        assert pq.read_schema(file).equals(Pair.arrow_schema(), check_metadata=False)
    pairs = read_records(tmp_path / "run" / "dataset", Pair)
    assert pairs, "the scripted run must keep pairs"
    for pair in pairs:
        expanded = expand_excerpts(pair.answer_with_markers, pair.text)
        assert expanded.resolved and expanded.text == pair.answer
        assert pair.excerpt_coverage >= 0.8 and pair.judge_score >= 4
        assert pair.config_fingerprint == cfg.fingerprint()
        assert pair.instantiator_model == "scripted" and pair.judge_prompt_version == "judge-v2"
    by_doc: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_doc.setdefault(pair.document_id, []).append(pair)
    for doc_pairs in by_doc.values():
        assert sum(p.synthetic_token_count for p in doc_pairs) <= doc_pairs[0].token_count
    assert {p.document_id for p in pairs} <= {"acid", "denmark"}  # fluid pairs were judged 2

    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    stages = saved["stages"]
    assert stages["query_filter"]["dropped"] == {"duplicate_query": 1}
    assert stages["templatize"]["rows_in"] == 6 and stages["templatize"]["dropped"] == {"unparseable_json": 1}
    assert stages["match"]["dropped"] == {"empty_document": 1}
    assert stages["filter"]["rows_out"] == len(pairs)
    assert saved["inputs"]["queries_read_skips"] == {"malformed_json": 1}
    quality = saved["quality"]
    assert quality["valid_template_rate"] == pytest.approx(5 / 6, abs=1e-3)
    assert quality["pairs"] == len(pairs) and quality["judge_score_histogram"]["5"] >= len(pairs)
    rejects = pq.read_table(tmp_path / "run" / "work" / "templatize" / "rejects" / "shard-000000.parquet")
    assert "reason" in rejects.column_names


def test_rerun_resumes_without_model_calls_and_changed_config_is_refused(tmp_path):
    cfg = config_for(tmp_path)
    run_scripted(cfg)
    first = dataset_rows(cfg)

    def must_not_be_called(conversation):
        raise AssertionError("a finished shard was recomputed")

    run_scripted(cfg, must_not_be_called)
    assert dataset_rows(cfg) == first

    changed = cfg.model_copy(deep=True)
    changed.judge.min_score = 5
    with pytest.raises(ConfigChanged, match="fingerprint"):
        run_scripted(changed)
    run_scripted(changed, force=True)


def test_crash_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path):
    reference = config_for(tmp_path, out="reference")
    reference.match.max_template_uses = 1  # the corpus-wide cap must survive the resume too
    run_scripted(reference)
    matches = read_records(tmp_path / "reference" / "work" / "match", Match)
    assert len({m.template_id for m in matches}) == len(matches)

    cfg = config_for(tmp_path, out="crashy")
    cfg.match.max_template_uses = 1
    calls = {"n": 0}

    def crashes_after_some_calls(conversation):
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("engine died")
        return scripted(conversation)

    with pytest.raises(RuntimeError, match="engine died"):
        run_scripted(cfg, crashes_after_some_calls)
    finished = list((tmp_path / "crashy" / "work").rglob("shard-*.parquet"))
    assert finished  # some shards were committed before the crash
    assert not list((tmp_path / "crashy").rglob(".*.tmp-*"))  # and no half-written file is left
    run_scripted(cfg)
    assert dataset_rows(cfg) == dataset_rows(reference)


@pytest.mark.model
def test_tiny_real_run_with_the_135m_model(tmp_path):
    cfg = config_for(tmp_path, shard_size=4, top_k=1)
    cfg.generator = BackendConfig(model="smollm2-135m-instruct", n_ctx=4096)
    cfg.templatize.max_tokens = 80
    cfg.instantiate.max_tokens = 120
    cfg.judge.max_tokens = 60
    summary = Pipeline(cfg, show_progress=False).run()
    assert summary["stages"]["templatize"]["requests"] >= 6  # every query reached the model (plus retries)
    assert summary["stages"]["templatize"]["completion_tokens"] > 0
    for pair in read_records(tmp_path / "run" / "dataset", Pair):  # the weak model may keep none
        assert expand_excerpts(pair.answer_with_markers, pair.text).text == pair.answer
        assert pair.excerpt_coverage >= 0.8 and pair.judge_score >= 4
    assert (tmp_path / "run" / "summary.json").is_file()


def test_a_ready_template_bank_skips_templatize(tmp_path):
    bank = tmp_path / "bank.jsonl"
    bank.write_text("".join(json.dumps(row) + "\n" for row in [
        {"template_id": "ft-1", "template": "What is <fi>weather phenomenon</fi>?",
         "compatible_document_description": "An encyclopedia article about a weather phenomenon."},
        {"template_id": "ft-2", "template": "what is <fi>Weather  phenomenon</fi>",
         "compatible_document_description": "An encyclopedia article about a weather phenomenon."},
        {"template_id": "ft-3", "template": "Where is <fi>country</fi> located?",
         "compatible_document_description": "An encyclopedia article about a country and its geography."},
    ]))
    cfg = config_for(tmp_path)
    cfg.queries = None
    cfg.templates = SourceConfig(path=str(bank))
    summary, backend = run_scripted(cfg)
    assert "templatize" not in summary["stages"] and "query_filter" not in summary["stages"]
    assert summary["stages"]["template_dedup"]["dropped"] == {"duplicate_template": 1}
    assert summary["index"]["templates"] == 2
    assert not any(c[0]["content"].startswith("You turn a real user query") for c in backend.calls)
    assert {p.template_id for p in read_records(tmp_path / "run" / "dataset", Pair)} <= {"ft-1", "ft-3"}


def test_each_model_stage_is_served_by_its_own_backend(tmp_path):
    cfg = config_for(tmp_path)
    cfg.templatize.backend = BackendConfig(kind="custom", model="tests.scripted_backend:make", n_ctx=1001)
    cfg.judge.backend = BackendConfig(kind="custom", model="tests.scripted_backend:make", n_ctx=1002)
    pipeline = Pipeline(cfg, show_progress=False)
    engines = {name: FakeBackend(scripted, model_id=f"{name}-model") for name in ("templatizer", "instantiator",
                                                                                     "judge")}
    pipeline.backends.register(cfg.templatize.backend, engines["templatizer"])
    pipeline.backends.register(cfg.generator, engines["instantiator"])
    pipeline.backends.register(cfg.judge.backend, engines["judge"])
    summary = pipeline.run()
    prompts = {name: {c[0]["content"][:20] for c in engine.calls} for name, engine in engines.items()}
    assert prompts["templatizer"] == {"You turn a real user"}
    assert all(p.startswith(("You write one", "You turn an instruc")) for p in prompts["instantiator"])
    assert prompts["judge"] == {"You are a strict jud"}
    templates = read_records(tmp_path / "run" / "work" / "templatize", Template)
    assert templates and {t.model_id for t in templates} == {"templatizer-model"}
    pairs = read_records(tmp_path / "run" / "dataset", Pair)
    assert pairs and {(p.instantiator_model, p.judge_model) for p in pairs} == {("instantiator-model", "judge-model")}
    assert summary["models"]["templatize"] == summary["models"]["judge"] == "tests.scripted_backend:make"


@pytest.mark.model
@pytest.mark.server
def test_three_real_engines_serve_templatize_instantiate_and_judge(tmp_path, llama_server, test_gguf):
    """llama.cpp in-process templatizes, a llama.cpp server on 127.0.0.1 instantiates, transformers judges."""
    from fineinstructions.backends.convert import resolve_hf_folder

    cfg = config_for(tmp_path, shard_size=4, top_k=1)
    cfg.templatize.backend = BackendConfig(kind="llamacpp", model=str(test_gguf), n_ctx=2048)
    cfg.generator = BackendConfig(kind="openai", base_url=llama_server, model="smollm2-135m-instruct",
                                  max_concurrency=2)
    cfg.judge.backend = BackendConfig(kind="transformers", model=str(resolve_hf_folder("smollm2-135m-instruct")),
                                      n_ctx=2048, max_concurrency=4)
    cfg.templatize.max_tokens, cfg.instantiate.max_tokens, cfg.judge.max_tokens = 80, 120, 40
    cfg.templates = None
    summary = Pipeline(cfg, show_progress=False).run()
    stages = summary["stages"]
    assert stages["templatize"]["requests"] >= 6 and stages["templatize"]["completion_tokens"] > 0
    templates = read_records(tmp_path / "run" / "work" / "templatize", Template)
    assert {t.model_id for t in templates} <= {test_gguf.name}
    if stages.get("instantiate", {}).get("requests"):  # the 135M model may leave no valid template to match
        assert stages["instantiate"]["completion_tokens"] > 0
    for pair in read_records(tmp_path / "run" / "work" / "judge", Pair):
        assert pair.instantiator_model == "smollm2-135m-instruct"
        assert pair.judge_model not in ("", "smollm2-135m-instruct", test_gguf.name)

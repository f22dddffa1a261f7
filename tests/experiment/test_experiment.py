"""`fineinstructions experiment` end to end at toy size: every step with scripted engines, resume, the CLI, and the
ready configs validated (the GPU one run at toy size on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fineinstructions.cli import app
from fineinstructions.errors import ConfigError
from fineinstructions.experiment import Experiment, ExperimentConfig, run_experiment
from fineinstructions.experiment.heldout import corpus_documents, trivia_questions
from fineinstructions.experiment.run import ExperimentError
from tests.test_pipeline import write_inputs

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parents[2]
HELDOUT = [{"instruction": "Where is Denmark?", "reference": "In northern Europe."},
           {"instruction": "What is acid rain?", "reference": "Rain made acidic by pollution."},
           {"instruction": "Who painted the Mona Lisa?", "reference": "Leonardo da Vinci."},
           {"instruction": "What do bees make?", "reference": "Honey."}]


@pytest.fixture(autouse=True)
def _scripted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIPTED_JUDGE", "pass")  # the scripted pipeline judge passes every pair
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(tmp_path: Path) -> dict[str, Any]:
    """A toy experiment: the pipeline tests' documents and queries, scripted engines, two seeds of a tiny model."""
    queries, documents = write_inputs(tmp_path)
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps(r) + "\n" for r in HELDOUT))
    recipes = {"generator": {"kind": "custom", "model": "tests.scripted_backend:recipes"}}
    return {
        "output_dir": str(tmp_path / "exp"),
        "corpus": {"kind": "path", "path": str(documents), "limit": 50},
        "heldout": {"kind": "path", "path": str(heldout), "limit": 4},
        "pipeline": {"queries": {"kind": "path", "path": str(queries)},
                     "generator": {"kind": "custom", "model": "tests.scripted_backend:make"},
                     "match": {"top_k": 2}, "run": {"shard_size": 4, "batch_size": 4}},
        "arms": [{"name": "fineinstructions", "kind": "fineinstructions"},
                 {"name": "documents", "kind": "documents"},
                 {"name": "wrap", "kind": "wrap", "overrides": recipes},
                 {"name": "nemotron_qa", "kind": "nemotron_qa", "overrides": recipes}],
        "train": {"model_size": "tiny", "seq_len": 32, "epochs": 1.0, "batch_size": 2, "vocab_size": 300,
                  "seeds": 2, "device": "cpu", "eval_fraction": 0.0},
        "evaluate": {"max_new_tokens": 8, "batch_size": 4, "threads": 1, "device": "cpu", "judge_mode": "all",
                     "judge": {"kind": "custom", "model": "tests.scripted_backend:judge"},
                     "bootstrap_resamples": 200},
    }


def test_a_tiny_experiment_runs_every_step_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = ExperimentConfig.model_validate(tiny(tmp_path))
    results = run_experiment(config)
    root = tmp_path / "exp"
    for name in ("experiment.json", "heldout.jsonl", "corpus/documents.jsonl", "results.json", "results.md",
                 "results.png", "train/manifest.json", "eval/scores.json", "runs/wrap/summary.json"):
        assert (root / name).is_file(), name
    assert (root / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((root / "experiment.json").read_text())
    assert set(state["steps"]) == {"inputs", "generate:fineinstructions", "generate:wrap", "generate:nemotron_qa",
                                   "train", "evaluate", "results"}
    assert all(step["status"] == "done" and step["invocations"] == 1 for step in state["steps"].values())

    assert results["anchor"] == "fineinstructions" and results["seeds"] == [0, 1] and results["questions"] == 4
    assert list(results["arms"]) == ["fineinstructions", "documents", "wrap", "nemotron_qa"]
    for arm, entry in results["arms"].items():
        cost, measures = entry["cost"], entry["measures"]
        assert cost["kept_items"] > 0 and cost["models"] == 2 and cost["seconds_per_step"] > 0
        assert (cost["generation_seconds"] is None) == (arm == "documents")
        for key in ("reference_grade", "single_rating", "rouge_l"):
            assert measures[key]["mean"] is not None and measures[key]["n"] == 4, (arm, key)
        if arm == "fineinstructions":
            assert measures["win_rate"] is None
        else:
            assert 0 <= measures["win_rate"]["mean"] <= 1 and measures["lc_win_rate"]["n"] == 4
    tokens = {a["train_tokens"] for a in json.loads((root / "train/manifest.json").read_text())["arms"].values()}
    assert len(tokens) == 1  # token for token
    table = (root / "results.md").read_text()
    assert all(f"| {arm} |" in table for arm in results["arms"]) and "s / kept item" in table
    scores = json.loads((root / "eval/scores.json").read_text())
    assert len(scores["models"]) == 8 and len(scores["pairwise"]["comparisons"]) == 6
    # every corpus document reached every generation run; no run read a held-out question
    corpus = {json.loads(line)["id"] for line in (root / "corpus/documents.jsonl").read_text().splitlines()}
    assert corpus == {"acid", "denmark", "empty", "fluid"}
    held = (root / "heldout.jsonl").read_text()
    assert all(q["instruction"] in held for q in HELDOUT)

    # A second invocation pays for nothing again: no generation, training or judge call, the same results.
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("SCRIPTED_CALL_LOG", str(calls))
    again = run_experiment(config)
    assert not calls.exists()
    assert again["arms"].keys() == results["arms"].keys()
    for arm in results["arms"]:
        assert again["arms"][arm]["measures"] == results["arms"][arm]["measures"]
    state = json.loads((root / "experiment.json").read_text())
    assert state["steps"]["train"]["invocations"] == 2
    generated = state["steps"]["generate:wrap"]["seconds"]

    # Another corpus is refused: every run and model there was made from the old one.
    other = ExperimentConfig.model_validate(tiny(tmp_path) | {"corpus": {"kind": "path", "path": str(
        tmp_path / "documents.jsonl"), "limit": 2}})
    with pytest.raises(ExperimentError, match="other corpus or held-out settings.*--force"):
        run_experiment(other)
    # Other evaluation settings re-evaluate; the generation steps keep their seconds (their settings are the same).
    changed = ExperimentConfig.model_validate(tiny(tmp_path) | {"evaluate": tiny(tmp_path)["evaluate"] | {
        "judge_mode": "reference"}})
    rescored = run_experiment(changed)
    assert rescored["arms"]["wrap"]["measures"]["single_rating"] is None
    state = json.loads((root / "experiment.json").read_text())
    assert state["steps"]["generate:wrap"]["seconds"] >= generated and state["steps"]["evaluate"]["invocations"] == 1

    # The CLI runs one step of it; a config file with --set and --out works the same way.
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny(tmp_path) | {"output_dir": "unused"}))
    result = CliRunner().invoke(app, ["experiment", "--config", str(path), "--out", str(root), "--step", "results",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert "results.md" in result.output
    result = CliRunner().invoke(app, ["experiment", "--config", str(path), "--step", "bogus", "--quiet"])
    assert result.exit_code != 0 and "unknown step" in result.output


def test_bad_experiment_configs_are_clear_errors(tmp_path: Path) -> None:
    data = tiny(tmp_path)
    for change, message in (({"arms": data["arms"][:1]}, "arms"),
                            ({"pipeline": {"documents": {"kind": "wikipedia"}}}, "set by the experiment"),
                            ({"arms": [data["arms"][0], data["arms"][0]]}, "repeated: fineinstructions"),
                            ({"corpus": {"kind": "path"}}, "needs `path`")):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(data | change))
        with pytest.raises(ConfigError, match=message):
            ExperimentConfig.from_yaml(path)


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_ready_configs_validate_and_build_every_step(name: str, tmp_path: Path) -> None:
    config = ExperimentConfig.from_yaml(REPO / "experiments" / f"{name}.yaml", [f"output_dir={tmp_path / name}"])
    assert [a.kind for a in config.arms][:2] == ["fineinstructions", "documents"]
    assert {a.kind for a in config.arms} >= {"fineinstructions", "documents", "wrap", "nemotron_qa"}
    assert config.train.seeds >= 3
    experiment = Experiment(config)
    for arm in experiment.generative_arms():
        pipeline = experiment.pipeline_config(arm)
        assert pipeline.recipe == arm.kind and pipeline.documents.path == str(experiment.corpus_file.resolve())
    train = experiment.train_config()
    assert [s.name for s in train.arm_specs] == [a.name for a in config.arms]
    train.validate()  # the preset takes the sequence length, the dtype is known, the arms are distinct
    assert experiment.evaluation_settings().judge_mode == "all"


def test_trivia_questions_and_a_corpus_near_them() -> None:
    questions = trivia_questions(["general"], 40, seed=3)
    assert len(questions) == 40 and len({q["instruction"] for q in questions}) == 40
    assert all(q["reference"] and q["source"] == "red-trivia:general" for q in questions)
    assert questions == trivia_questions(["general"], 40, seed=3)
    assert not any("computer" in q["instruction"].lower() for q in trivia_questions(["general"], 10_000))
    from fineinstructions.experiment.config import CorpusConfig

    corpus = CorpusConfig(limit=30, near_questions=1, embedder="hashing-sim", seed=0)
    documents = corpus_documents(corpus, [q["instruction"] for q in questions[:10]])
    assert len(documents) == 30 and len({d.document_id for d in documents}) == 30
    assert all(300 <= len(d.text) <= 1500 for d in documents)
    # the leads near the questions come first, then a seeded sample of the rest
    random_only = corpus_documents(corpus.model_copy(update={"near_questions": 0}), [])
    assert [d.document_id for d in documents[10:]] != [d.document_id for d in random_only[:20]]

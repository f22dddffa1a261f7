"""End to end: two tiny random Llama arms in a fake TRAIN_DIR, judged by the real 135M GGUF through llama.cpp;
resume from the cache; bad input; the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fineinstructions.cli import app
from fineinstructions.config import BackendConfig
from fineinstructions.evaluation import EvaluationInputError, EvaluationSettings, ModelSpec, evaluate
from fineinstructions.io.run_folder import LOCK, MARKER, RunFolderError
from tests.evaluation.tiny import make_tiny_llama, make_tokenizer

torch = pytest.importorskip("torch")
runner = CliRunner()
HELDOUT = [
    {"instruction": "What is the capital of France?", "reference": "The capital of France is Paris.",
     "document_id": "d1", "text": "Paris is the capital of France."},
    {"instruction": "At what temperature does water boil?", "reference": "Water boils at one hundred degrees.",
     "document_id": "d2", "text": "Water boils at one hundred degrees Celsius at sea level."},
    {"instruction": "How do bees make honey?", "reference": "Bees make honey from the nectar of flowers.",
     "document_id": "d3", "text": "Bees make honey from the nectar of flowers."},
]


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a shared CPU wait on each other
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    tokenizer = make_tokenizer()
    make_tiny_llama(root / "pairs" / "final", seed=0, prompt_format="chat", trained_on="pairs", tokenizer=tokenizer)
    make_tiny_llama(root / "documents" / "final", seed=1, prompt_format="plain", trained_on="documents",
                    tokenizer=tokenizer)
    for arm, start in (("pairs", 6.0), ("documents", 6.2)):
        lines = [{"step": s, "tokens": s * 512, "loss": start - s * 0.1, "lr": 1e-3, "tokens_per_s": 900.0}
                 | ({"eval_loss": start - s * 0.09} if s % 5 == 0 else {}) for s in range(1, 11)]
        (root / arm / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{broken\n")
    (root / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELDOUT))
    return root


def _settings(judge: BackendConfig | None) -> EvaluationSettings:
    return EvaluationSettings(max_new_tokens=12, batch_size=4, threads=1, judge=judge, judge_max_tokens=8,
                              judge_max_answer_chars=200, bootstrap_resamples=500)


def test_evaluate_a_training_run_with_a_real_judge_and_resume(train_dir: Path, test_gguf: Path, tmp_path: Path):
    judge = BackendConfig(kind="llamacpp", model=str(test_gguf), n_ctx=2048, n_threads=1)
    out = tmp_path / "eval"
    scores = evaluate(out, train_dir=train_dir, settings=_settings(judge))
    for name in ("answers.jsonl", "judgments.jsonl", "scores.json", "evaluation.png", "answers/pairs.json",
                 "answers/documents.json", "cache/requests.sqlite"):
        assert (out / name).is_file(), name
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob(".*.tmp-*"))
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and {a["model"] for a in answers} == {"pairs", "documents"}
    assert all(a["reference_tokens"] > 0 and a["reference_logprob"] < 0 for a in answers)
    judgments = [json.loads(x) for x in (out / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 6 and sorted(j["order"] for j in judgments) == ["ab"] * 3 + ["ba"] * 3
    assert all(j["judge"] == test_gguf.name and j["error"] is None for j in judgments)
    assert json.loads((out / "scores.json").read_text()) == json.loads(json.dumps(scores))

    assert [m["name"] for m in scores["models"]] == ["pairs", "documents"]
    assert [m["prompt_format"] for m in scores["models"]] == ["chat", "plain"]
    assert all(m["answers"] == 3 and m["answer_failures"] == 0 for m in scores["models"])
    reference = scores["reference"]
    assert reference["items"] == 3 and reference["tokenizers_match"] and reference["warning"] is None
    for name in ("pairs", "documents"):
        figures = reference["per_model"][name]
        assert 0 <= figures["rouge_l"]["mean"] <= 1 and figures["rouge_l"]["n"] == 3
        assert figures["logprob_per_token"]["ci_low"] <= figures["logprob_per_token"]["mean"] < 0
        assert figures["perplexity"]["mean"] > 1
    assert "logprob_per_token" in reference["difference_a_minus_b"]
    pairwise = scores["pairwise"]
    assert pairwise["judgments"] == 6 and pairwise["failures"] == 0 and pairwise["instructions"] == 3
    outcomes = pairwise["judgment_outcomes"]
    assert outcomes["wins"] + outcomes["ties"] + outcomes["losses"] == 6
    assert 0 <= pairwise["win_rate"]["mean"] <= 1 and pairwise["judge_calls"] == 6
    assert scores["training"]["pairs"]["final_eval_loss"] == pytest.approx(6.0 - 10 * 0.09)

    # a rerun reuses every answer and judge call
    again = evaluate(out, train_dir=train_dir, settings=_settings(judge))
    assert all(m["reused"] for m in again["models"])
    assert again["pairwise"]["judge_calls"] == 0 and again["pairwise"]["cache_hits"] == 6
    assert again["pairwise"]["win_rate"] == pairwise["win_rate"]
    assert again["single"] is None  # pairwise is the default judge mode

    # single-answer grading on top: the pairwise calls come from the cache, only the ratings are paid
    both = evaluate(out, train_dir=train_dir, settings=replace(_settings(judge), judge_mode="both"))
    assert both["pairwise"]["cache_hits"] == 6 and both["pairwise"]["win_rate"] == pairwise["win_rate"]
    single = both["single"]
    assert single["judgments"] == 6 and single["judge_calls"] == 6 and single["failures"] == 0
    assert single["instructions"] == 3 and single["model_a"] == "pairs"
    grades = [json.loads(line) for line in (out / "grades.jsonl").read_text().splitlines()]
    assert len(grades) == 6 and {g["model"] for g in grades} == {"pairs", "documents"}
    assert pairwise["length_controlled_win_rate"]["n"] == 3 and "slope" in pairwise["length_controlled_win_rate"]

    # every measure: the answers graded against their reference answers (MixEval-style) too
    every = evaluate(out, train_dir=train_dir, settings=replace(_settings(judge), judge_mode="all"))
    graded = every["reference_graded"]
    assert graded["judgments"] == 6 and graded["judge_calls"] == 6 and graded["failures"] == 0
    assert every["single"]["cache_hits"] == 6 and every["pairwise"]["cache_hits"] == 6
    reference_grades = [json.loads(line) for line in (out / "reference_grades.jsonl").read_text().splitlines()]
    assert len(reference_grades) == 6 and all(g["raw"] for g in reference_grades)
    with pytest.raises(EvaluationInputError, match="judge mode"):
        evaluate(out, train_dir=train_dir, settings=replace(_settings(judge), judge_mode="pointwise"))


def test_judge_that_cannot_start_keeps_the_other_figures(train_dir: Path, tmp_path: Path):
    broken = BackendConfig(kind="llamacpp", model=str(tmp_path / "missing.gguf"))
    scores = evaluate(tmp_path / "eval", train_dir=train_dir, settings=_settings(broken))
    assert "cannot start the judge backend" in scores["pairwise"]["error"]
    assert scores["reference"]["items"] == 3 and (tmp_path / "eval" / "evaluation.png").is_file()
    assert any("cannot start the judge" in w for w in scores["warnings"])


def test_the_eval_folder_is_claimed_older_ones_adopted_and_stale_outputs_removed(train_dir: Path, tmp_path: Path):
    out = tmp_path / "eval"
    first = evaluate(out, train_dir=train_dir, settings=_settings(None))
    assert (out / MARKER).is_file() and (out / "fingerprint").is_file()
    # A folder made by an older version (no marker, no fingerprint) is adopted and its answers reused.
    for name in (MARKER, "fingerprint", LOCK):
        (out / name).unlink()
    (out / "judgments.jsonl").write_text("{}\n")  # as a judged run left it
    again = evaluate(out, train_dir=train_dir, settings=_settings(None))
    assert all(m["reused"] for m in again["models"]) and again["reference"] == first["reference"]
    assert (out / MARKER).is_file() and (out / "judgments.jsonl").is_file()  # nothing known to be stale
    # Other settings: never refused; answers are redone and what the older settings wrote goes.
    changed = evaluate(out, train_dir=train_dir, settings=replace(_settings(None), max_new_tokens=4))
    assert not any(m["reused"] for m in changed["models"])
    assert not (out / "judgments.jsonl").exists() and (out / "scores.json").is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a fineinstructions run folder"):
        evaluate(foreign, train_dir=train_dir, settings=_settings(None))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_models_that_cannot_be_compared_are_clear_errors(train_dir: Path, tmp_path: Path):
    pairs = str(train_dir / "pairs" / "final")
    with pytest.raises(EvaluationInputError, match="at least two models, got 1"):
        evaluate(tmp_path / "e", train_dir=train_dir, models=[ModelSpec("a", pairs)], settings=_settings(None))
    with pytest.raises(EvaluationInputError, match="different names; repeated: a"):
        evaluate(tmp_path / "e", train_dir=train_dir, models=[ModelSpec("a", pairs)] * 2, settings=_settings(None))
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(EvaluationInputError, match="not a causal language model"):
        evaluate(tmp_path / "e", train_dir=train_dir, models=[ModelSpec("a", pairs), ModelSpec("b", str(not_a_model))],
                 settings=_settings(None))
    with pytest.raises(EvaluationInputError, match="no finished pairs model"):
        evaluate(tmp_path / "e", train_dir=tmp_path, settings=_settings(None))
    with pytest.raises(EvaluationInputError, match="NAME=PATH"):
        ModelSpec.parse("no-equals-sign")


def test_cli_two_models_with_different_tokenizers_and_bad_input(train_dir: Path, tmp_path: Path):
    other = make_tiny_llama(tmp_path / "other", seed=2, tokenizer=make_tokenizer(vocab_size=300))
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": r["instruction"], "answer": r["reference"]}) + "\n"
                                 for r in HELDOUT))
    base = ["evaluate", "--model", f"pairs={train_dir / 'pairs' / 'final'}", "--model", f"other={other}",
            "--instructions", str(questions), "--no-judge", "--threads", "1", "--max-new-tokens", "6"]
    result = runner.invoke(app, [*base, "--instruction-field", "question", "--reference-field", "answer",
                                 "--limit", "2", "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "ROUGE-L" in result.output and "different tokenizers" in result.output
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores["instructions"]["items"] == 2 and scores["pairwise"] is None
    assert not scores["reference"]["tokenizers_match"]
    assert "logprob_per_token" not in scores["reference"]["difference_a_minus_b"]
    assert "logprob_per_char" in scores["reference"]["difference_a_minus_b"]
    assert not (tmp_path / "eval" / "judgments.jsonl").exists()

    missing_field = runner.invoke(app, [*base, "--out", str(tmp_path / "bad")])
    assert missing_field.exit_code == 2 and "instruction field 'instruction'" in missing_field.output
    assert "question" in missing_field.output
    nothing = runner.invoke(app, ["evaluate", "--out", str(tmp_path / "bad")])
    assert nothing.exit_code == 2 and "TRAIN_DIR" in nothing.output
    bad_model = runner.invoke(app, ["evaluate", str(train_dir), "--model", "x=/nonexistent/model", "--model",
                                    "y=/nonexistent/other", "--no-judge", "--out", str(tmp_path / "bad")])
    assert bad_model.exit_code == 2 and "not a model folder" in bad_model.output
    bad_judge = runner.invoke(app, ["evaluate", str(train_dir), "--judge-kind", "nonsense", "--out",
                                    str(tmp_path / "bad")])
    assert bad_judge.exit_code == 2

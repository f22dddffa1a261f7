"""`train` end to end on a small real-text pair dataset: folders, manifest, metrics, resume, conflicts, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from fineinstructions.cli import app
from fineinstructions.errors import ConfigChanged
from fineinstructions.io.run_folder import LOCK, MARKER, RunFolder, RunFolderError
from fineinstructions.training.data import InsufficientData, TrainDataError
from fineinstructions.training.loop import TrainingError
from fineinstructions.training.models import ModelConfigError
from fineinstructions.training.run import TrainConfig, TrainDirConflict, run_training, summary_table
from fineinstructions.training.tokenizer import TokenizerError

SMALL = {"model_size": "tiny", "seq_len": 64, "batch_size": 4, "vocab_size": 1024, "log_every": 5,
         "eval_every": 10, "checkpoint_every": 10, "heldout_fraction": 0.15, "device": "cpu"}


def config(source: Path, out: Path, **changes: object) -> TrainConfig:
    return TrainConfig(source=str(source), out=str(out), **(SMALL | changes))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(pair_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train")
    return out, run_training(config(pair_dataset, out, mask_instructions=True))


def test_train_dir_layout_and_manifest(trained: tuple[Path, dict]) -> None:
    out, manifest = trained
    assert {p.name for p in out.iterdir()} >= {"manifest.json", "tokenizer", "heldout.jsonl", "pairs", "documents"}
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(manifest, default=str))
    assert manifest["tokenizer"]["vocab_size"] == 1024 and len(manifest["tokenizer"]["sha"]) == 16
    assert manifest["mask_instructions"] is True and manifest["parameters"] > 1_000_000
    pairs, documents = manifest["arms"]["pairs"], manifest["arms"]["documents"]
    assert pairs["train_tokens"] == documents["train_tokens"] == manifest["token_budget"]["tokens_per_epoch"]
    assert pairs["train_blocks"] == documents["train_blocks"] == manifest["token_budget"]["train_blocks"]
    assert pairs["train_loss_tokens"] < documents["train_loss_tokens"]  # instructions are masked
    for name, arm in (("pairs", pairs), ("documents", documents)):
        model = manifest["models"][name]
        assert model["status"] == "done" and model["arm"] == name and model["seed"] == 0
        assert model["result"]["tokens_seen"] == arm["train_tokens"] and model["result"]["completed"]
        assert model["result"]["eval_loss"] is not None and model["result"]["tokens_per_s"] > 0
        assert model["prompt_format"] == arm["prompt_format"] == "instruction"
    # held-out documents are in neither arm
    held = set(manifest["heldout"]["document_ids"])
    lines = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert held and {x["document_id"] for x in lines} == held
    assert set(lines[0]) >= {"instruction", "reference", "document_id", "text"}
    assert manifest["training_documents"] + len(held) == 30
    table = summary_table(manifest)
    assert table.row_count == 2


def test_metrics_and_checkpoints(trained: tuple[Path, dict]) -> None:
    out, manifest = trained
    for arm in ("pairs", "documents"):
        lines = [json.loads(line) for line in (out / arm / "metrics.jsonl").read_text().splitlines()]
        assert lines[-1]["step"] == manifest["models"][arm]["result"]["total_steps"]
        assert all({"step", "tokens", "loss", "lr", "tokens_per_s"} <= set(x) for x in lines)
        assert any("eval_loss" in x for x in lines)
        assert (out / arm / "checkpoints").is_dir()


@pytest.mark.parametrize("arm,prompt_format", [("pairs", "instruction"), ("documents", "instruction")])
def test_final_model_loads_and_generates(trained: tuple[Path, dict], arm: str, prompt_format: str) -> None:
    out, manifest = trained
    final = out / arm / "final"
    card = json.loads((final / "fineinstructions-model.json").read_text())
    assert card["trained_on"] == arm and card["prompt_format"] == prompt_format
    assert card["tokens_seen"] == manifest["arms"][arm]["train_tokens"]
    assert card["config_fingerprint"] == manifest["fingerprint"] and card["tokenizer_sha"] == manifest["tokenizer"][
        "sha"]
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is Paris?"}], tokenize=False,
                                           add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_rerun_skips_finished_arms_and_refuses_another_config(trained: tuple[Path, dict], pair_dataset: Path) -> None:
    out, manifest = trained
    again = run_training(config(pair_dataset, out, mask_instructions=True, log_every=1))  # logging is not fingerprinted
    assert again["models"]["pairs"]["result"] == manifest["models"]["pairs"]["result"]
    with pytest.raises(TrainDirConflict, match=r"mask_instructions: True -> False.*--force"):
        run_training(config(pair_dataset, out))


def test_interrupted_arm_resumes(pair_dataset: Path, tmp_path: Path) -> None:
    cfg = config(pair_dataset, tmp_path, arms=("pairs",), epochs=0.5)
    first = run_training(cfg, max_steps_this_call=5)
    assert first["models"]["pairs"]["status"] == "interrupted" and not (tmp_path / "pairs" / "final").exists()
    stale = tmp_path / "pairs" / "checkpoints" / ".step-000099.tmp-killed"  # left by a SIGKILL mid-write
    stale.mkdir()
    second = run_training(cfg)
    assert not stale.exists()
    result = second["models"]["pairs"]["result"]
    assert second["models"]["pairs"]["status"] == "done" and result["resumed_from"] == 5
    assert (tmp_path / "pairs" / "final" / "model.safetensors").is_file()
    assert second["models"]["documents"]["status"] == "pending"
    # a changed config is refused, then --force starts over
    with pytest.raises(TrainDirConflict):
        run_training(config(pair_dataset, tmp_path, arms=("pairs",), seq_len=32))
    forced = run_training(config(pair_dataset, tmp_path, arms=("pairs",), seq_len=32), force=True,
                          max_steps_this_call=1)
    assert forced["seq_len"] == 32 and forced["models"]["pairs"]["result"]["resumed_from"] == 0


def test_a_train_dir_made_before_run_folders_were_marked_is_resumed(trained: tuple[Path, dict], pair_dataset: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "older"
    shutil.copytree(trained[0], out)
    assert (out / MARKER).is_file() and (out / "fingerprint").read_text().strip() == trained[1]["fingerprint"]
    for name in (MARKER, "fingerprint", LOCK):  # as an older version left it: manifest.json holds the fingerprint
        (out / name).unlink()
    again = run_training(config(pair_dataset, out, mask_instructions=True))
    assert again["models"]["pairs"]["result"] == trained[1]["models"]["pairs"]["result"]  # both arms were skipped
    assert (out / MARKER).is_file() and (out / "fingerprint").read_text().strip() == trained[1]["fingerprint"]
    for name in (MARKER, "fingerprint"):
        (out / name).unlink()
    with pytest.raises(TrainDirConflict, match=r"mask_instructions: True -> False.*--force"):
        run_training(config(pair_dataset, out))
    assert ConfigChanged is TrainDirConflict


def test_a_foreign_or_busy_folder_is_refused(pair_dataset: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a fineinstructions run folder"):
        run_training(config(pair_dataset, foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    with RunFolder(tmp_path / "busy"), pytest.raises(RunFolderError, match="in use"):
        run_training(config(pair_dataset, tmp_path / "busy"))


def test_bad_input(pair_dataset: Path, tmp_path: Path, trained: tuple[Path, dict]) -> None:
    with pytest.raises(ModelConfigError, match="longer than the tiny preset"):
        run_training(config(pair_dataset, tmp_path / "a", seq_len=2048))
    with pytest.raises(InsufficientData, match="pairs: .* tokens.*documents: .* tokens"):
        run_training(config(pair_dataset, tmp_path / "b", tokens=10_000_000))
    assert not (tmp_path / "b").exists()  # refused before anything was written: a corrected rerun is not a conflict
    (tmp_path / "b").mkdir()
    with pytest.raises(InsufficientData):
        run_training(config(pair_dataset, tmp_path / "b", tokens=10_000_000))
    assert [p.name for p in (tmp_path / "b").iterdir()] == [LOCK]  # an empty folder stays one, not claimed
    with RunFolder(tmp_path / "b"):  # and a corrected rerun may claim it
        pass
    with pytest.raises(TrainDataError, match="no Parquet files"):
        run_training(config(tmp_path, tmp_path / "c"))
    noeos = tmp_path / "noeos"
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=AutoTokenizer.from_pretrained(trained[0] / "tokenizer")
                            .backend_tokenizer).save_pretrained(noeos)
    with pytest.raises(TokenizerError, match="no eos token"):
        run_training(config(pair_dataset, tmp_path / "d", tokenizer=str(noeos)))


def test_existing_tokenizer(pair_dataset: Path, tmp_path: Path, trained: tuple[Path, dict]) -> None:
    manifest = run_training(config(pair_dataset, tmp_path, tokenizer=str(trained[0] / "tokenizer"),
                                   arms=("documents",), epochs=0.25))
    assert manifest["tokenizer"]["sha"] == trained[1]["tokenizer"]["sha"]
    assert manifest["models"]["documents"]["status"] == "done"


def test_cli(pair_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["train", str(pair_dataset / "dataset"), "--out", str(tmp_path / "t"), "--batch-size", "8",
            "--vocab-size", "512", "--epochs", "0.5", "--quiet"]
    result = runner.invoke(app, args + ["--seq-len", "64"])
    assert result.exit_code == 0, result.output
    assert "pairs" in result.output and "documents" in result.output
    assert (tmp_path / "t" / "documents" / "final" / "fineinstructions-model.json").is_file()
    result = runner.invoke(app, args + ["--seq-len", "32"])
    assert result.exit_code == 2 and "another configuration" in " ".join(result.output.split())
    result = runner.invoke(app, ["train", str(tmp_path / "none"), "--out", str(tmp_path / "u")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, args[:4] + ["--arms", "pairs,bogus"])
    assert result.exit_code == 2 and "unknown arm" in result.output


def _recipe_texts(pair_dataset: Path, out: Path) -> Path:
    """A recipe run's dataset stand-in: one rephrasing-like text per document, under dataset/rank-00000/."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fineinstructions.training.data import read_pairs

    docs = {p.document_id: p.text for p in read_pairs(pair_dataset)}
    folder = out / "dataset" / "rank-00000"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"document_id": list(docs), "text": [f"In other words: {t}" for t in docs.values()],
                             "recipe": ["wrap"] * len(docs)}), folder / "part-000000.parquet")
    return out


def _documents_file(pair_dataset: Path, path: Path) -> Path:
    from fineinstructions.training.data import read_pairs

    docs = {p.document_id: p.text for p in read_pairs(pair_dataset)}
    path.write_text("".join(json.dumps({"id": d, "text": t}) + "\n" for d, t in docs.items()))
    return path


def test_any_number_of_arms_and_seeds_are_token_matched(pair_dataset: Path, tmp_path: Path) -> None:
    from fineinstructions.training.data import ArmSpec

    texts = _recipe_texts(pair_dataset, tmp_path / "wrap-run")
    documents = _documents_file(pair_dataset, tmp_path / "documents.jsonl")
    specs = (ArmSpec("fi", "pairs", (str(pair_dataset),)), ArmSpec("docs", "documents", (str(documents),)),
             ArmSpec("wrap", "texts", (str(texts),)))
    cfg = TrainConfig(out=str(tmp_path / "t"), arm_specs=specs, seeds=2, epochs=0.5,
                      **(SMALL | {"heldout_fraction": 0.2}))  # type: ignore[arg-type]
    manifest = run_training(cfg)
    assert list(manifest["models"]) == ["fi-seed0", "docs-seed0", "wrap-seed0", "fi-seed1", "docs-seed1",
                                        "wrap-seed1"]
    assert manifest["seeds"] == [0, 1] and manifest["pair_format"] == "instruction"
    tokens = {arm["train_tokens"] for arm in manifest["arms"].values()}
    assert tokens == {manifest["token_budget"]["tokens_per_epoch"]}  # every arm: the same tokens
    assert {arm["kind"] for arm in manifest["arms"].values()} == {"pairs", "documents", "texts"}
    assert all(m["status"] == "done" for m in manifest["models"].values())
    steps = {m["result"]["total_steps"] for m in manifest["models"].values()}
    assert len(steps) == 1  # the same steps for every model
    card = json.loads((tmp_path / "t" / "wrap-seed1" / "final" / "fineinstructions-model.json").read_text())
    assert card["trained_on"] == "wrap" and card["seed"] == 1 and card["arm_kind"] == "texts"
    assert card["prompt_format"] == "instruction"
    held = set(manifest["heldout"]["document_ids"])
    assert held and manifest["training_documents"] == 30 - len(held)
    # the same seed starts every arm from the same weights; another seed from others
    from fineinstructions.training.models import build_model

    first = {k: v.clone() for k, v in build_model("tiny", 1024, 0, 64).state_dict().items()}
    again = build_model("tiny", 1024, 0, 64).state_dict()
    other = build_model("tiny", 1024, 1, 64).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # rerunning skips every finished model; the evaluation finds all six, anchor first
    assert run_training(cfg)["models"] == manifest["models"]
    from fineinstructions.evaluation.run import train_dir_models

    assert [m.name for m in train_dir_models(tmp_path / "t")] == list(manifest["models"])


def test_arm_specs_and_cli_arms(pair_dataset: Path, tmp_path: Path) -> None:
    from fineinstructions.training.data import ArmSpec

    assert ArmSpec.parse("wrap=texts:a,b") == ArmSpec("wrap", "texts", ("a", "b"))
    for bad, message in (("wrap", "NAME=KIND:PATH"), ("wrap=texts:", "NAME=KIND:PATH"),
                         ("wrap=essays:x", "kind must be one of"), ("w rap=texts:x", "arm name"),
                         ("fi-seed1=pairs:x", "seed suffix"), ("tokenizer=pairs:x", "not be one of")):
        with pytest.raises(TrainDataError, match=message):
            ArmSpec.parse(bad)
    documents = _documents_file(pair_dataset, tmp_path / "documents.jsonl")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "t"), "--arm", f"fi=pairs:{pair_dataset}",
                                 "--arm", f"docs=documents:{documents}", "--seq-len", "64", "--batch-size", "8",
                                 "--vocab-size", "512", "--epochs", "0.25", "--pair-format", "chat", "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["arms"]["fi"]["prompt_format"] == "chat" and manifest["arms"]["docs"]["prompt_format"] == \
        "instruction"
    result = runner.invoke(app, ["train", str(pair_dataset), "--out", str(tmp_path / "u"), "--arm",
                                 f"fi=pairs:{pair_dataset}"])
    assert result.exit_code == 2 and "not both" in result.output
    with pytest.raises(TrainingError, match="arm names must differ"):
        run_training(TrainConfig(out=str(tmp_path / "v"), arm_specs=(ArmSpec("a", "pairs", (str(pair_dataset),)),
                                                                     ArmSpec("a", "documents", (str(documents),)))))

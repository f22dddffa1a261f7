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
    for arm in (pairs, documents):
        assert arm["status"] == "done"
        assert arm["result"]["tokens_seen"] == arm["train_tokens"] and arm["result"]["completed"]
        assert arm["result"]["eval_loss"] is not None and arm["result"]["tokens_per_s"] > 0
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
        assert lines[-1]["step"] == manifest["arms"][arm]["result"]["total_steps"]
        assert all({"step", "tokens", "loss", "lr", "tokens_per_s"} <= set(x) for x in lines)
        assert any("eval_loss" in x for x in lines)
        assert (out / arm / "checkpoints").is_dir()


@pytest.mark.parametrize("arm,prompt_format", [("pairs", "chat"), ("documents", "plain")])
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
    assert again["arms"]["pairs"]["result"] == manifest["arms"]["pairs"]["result"]
    with pytest.raises(TrainDirConflict, match=r"mask_instructions: True -> False.*--force"):
        run_training(config(pair_dataset, out))


def test_interrupted_arm_resumes(pair_dataset: Path, tmp_path: Path) -> None:
    cfg = config(pair_dataset, tmp_path, arms=("pairs",), epochs=0.5)
    first = run_training(cfg, max_steps_this_call=5)
    assert first["arms"]["pairs"]["status"] == "interrupted" and not (tmp_path / "pairs" / "final").exists()
    stale = tmp_path / "pairs" / "checkpoints" / ".step-000099.tmp-killed"  # left by a SIGKILL mid-write
    stale.mkdir()
    second = run_training(cfg)
    assert not stale.exists()
    result = second["arms"]["pairs"]["result"]
    assert second["arms"]["pairs"]["status"] == "done" and result["resumed_from"] == 5
    assert (tmp_path / "pairs" / "final" / "model.safetensors").is_file()
    assert second["arms"]["documents"]["status"] == "pending"
    # a changed config is refused, then --force starts over
    with pytest.raises(TrainDirConflict):
        run_training(config(pair_dataset, tmp_path, arms=("pairs",), seq_len=32))
    forced = run_training(config(pair_dataset, tmp_path, arms=("pairs",), seq_len=32), force=True,
                          max_steps_this_call=1)
    assert forced["seq_len"] == 32 and forced["arms"]["pairs"]["result"]["resumed_from"] == 0


def test_a_train_dir_made_before_run_folders_were_marked_is_resumed(trained: tuple[Path, dict], pair_dataset: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "older"
    shutil.copytree(trained[0], out)
    assert (out / MARKER).is_file() and (out / "fingerprint").read_text().strip() == trained[1]["fingerprint"]
    for name in (MARKER, "fingerprint", LOCK):  # as an older version left it: manifest.json holds the fingerprint
        (out / name).unlink()
    again = run_training(config(pair_dataset, out, mask_instructions=True))
    assert again["arms"]["pairs"]["result"] == trained[1]["arms"]["pairs"]["result"]  # both arms were skipped
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
    assert manifest["arms"]["documents"]["status"] == "done"


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

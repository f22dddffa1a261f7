"""The training loop: schedule, weight decay groups, checkpoints, exact resume, fingerprint mismatches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from fineinstructions.training.loop import (
    CheckpointMismatch,
    PackedData,
    TrainingError,
    TrainSettings,
    data_order,
    list_checkpoints,
    lr_at,
    make_optimizer,
    train_loop,
)


def small_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32,
                                        tie_word_embeddings=True))


@pytest.fixture(scope="module")
def data() -> PackedData:
    rng = np.random.default_rng(0)
    return PackedData(rng.integers(0, 64, (40, 16)), rng.random((40, 16)) > 0.3)


SETTINGS = TrainSettings(seq_len=16, batch_size=4, grad_accum=2, lr=1e-2, warmup_steps=2, log_every=1,
                         checkpoint_every=2, keep_checkpoints=2, epochs=2.0, device="cpu")


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    total = 100
    lrs = [lr_at(s, SETTINGS, total) for s in range(total)]
    assert lrs[0] == pytest.approx(SETTINGS.lr / 2) and lrs[1] == pytest.approx(SETTINGS.lr)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[-1] == pytest.approx(SETTINGS.lr / 10)


def test_no_weight_decay_on_norms_and_embeddings() -> None:
    model = small_model()
    optimizer = make_optimizer(model, SETTINGS, torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == SETTINGS.weight_decay
    assert any(p is model.model.embed_tokens.weight for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_data_order_covers_each_block_once_per_epoch() -> None:
    order = data_order(10, 2.5, seed=3)
    assert len(order) == 25
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:20]) == list(range(10))
    assert np.array_equal(order, data_order(10, 2.5, seed=3))


def test_resume_ends_with_the_same_weights(tmp_path: Path, data: PackedData) -> None:
    full_model = small_model()
    full = train_loop(full_model, data, SETTINGS, tmp_path / "full", fingerprint="f", eval_data=data.slice(slice(0, 4)))
    assert full.completed and full.steps == full.total_steps == math.ceil(2 * 40 / 8)
    assert full.tokens_seen == 80 * 16 and full.loss_tokens_seen == int(data.loss_mask[:, 1:].sum()) * 2

    first = train_loop(small_model(), data, SETTINGS, tmp_path / "split", fingerprint="f", max_steps_this_call=3)
    assert not first.completed and first.steps == 3
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["step-000002", "step-000003"]
    resumed_model = small_model(seed=99)  # whatever the weights: the checkpoint replaces them
    resumed = train_loop(resumed_model, data, SETTINGS, tmp_path / "split", fingerprint="f",
                         eval_data=data.slice(slice(0, 4)))
    assert resumed.completed and resumed.resumed_from == 3
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    assert resumed.eval_loss == pytest.approx(full.eval_loss, abs=1e-6)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)
    full_lines = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    split_lines = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in split_lines] == [x["step"] for x in full_lines] == list(range(1, 11))
    assert [x["loss"] for x in split_lines] == pytest.approx([x["loss"] for x in full_lines], abs=1e-6)
    assert {"step", "tokens", "loss", "lr", "tokens_per_s"} <= set(full_lines[0])
    assert "eval_loss" in full_lines[-1]
    # checkpoints keep the newest two and hold weights, optimizer, RNG, data order and state
    newest = list_checkpoints(tmp_path / "split")
    assert [p.name for p in newest] == ["step-000008", "step-000010"]
    assert {"model.safetensors", "config.json", "trainer_state.pt", "data_order.npy", "state.json"} <= {
        f.name for f in newest[-1].iterdir()}
    # a finished run called again does nothing and reports the same result
    again = train_loop(small_model(), data, SETTINGS, tmp_path / "split", fingerprint="f")
    assert again.completed and again.resumed_from == full.total_steps and again.final_loss == resumed.final_loss


def test_checkpoint_of_another_configuration_is_refused(tmp_path: Path, data: PackedData) -> None:
    train_loop(small_model(), data, SETTINGS, tmp_path, fingerprint="f", max_steps_this_call=2)
    other = TrainSettings(**{**SETTINGS.__dict__, "lr": 5e-3})
    with pytest.raises(CheckpointMismatch, match=r"lr 0.01 -> 0.005.*--force"):
        train_loop(small_model(), data, other, tmp_path, fingerprint="f")
    with pytest.raises(CheckpointMismatch, match="run fingerprint f -> g"):
        train_loop(small_model(), data, SETTINGS, tmp_path, fingerprint="g")
    with pytest.raises(CheckpointMismatch, match="data sha"):
        train_loop(small_model(), data.slice(slice(0, 39)), SETTINGS, tmp_path, fingerprint="f")
    # logging and checkpoint cadence are not part of the fingerprint
    relaxed = TrainSettings(**{**SETTINGS.__dict__, "log_every": 5, "checkpoint_every": 100})
    assert train_loop(small_model(), data, relaxed, tmp_path, fingerprint="f", max_steps_this_call=1).resumed_from == 2
    forced = train_loop(small_model(), data, other, tmp_path, fingerprint="f", force=True, max_steps_this_call=1)
    assert forced.resumed_from == 0 and forced.steps == 1


def test_bad_inputs(tmp_path: Path, data: PackedData) -> None:
    with pytest.raises(TrainingError, match="seq_len"):
        train_loop(small_model(), data, TrainSettings(seq_len=32), tmp_path, fingerprint="f")
    with pytest.raises(TrainingError, match="empty"):
        train_loop(small_model(), data.slice(slice(0, 0)), SETTINGS, tmp_path, fingerprint="f")
    with pytest.raises(TrainingError, match="batch_size"):
        TrainSettings(batch_size=0)
    with pytest.raises(TrainingError, match="dtype"):
        TrainSettings(dtype="float16")
    with pytest.raises(TrainingError, match="shape|seq_len"):
        PackedData(np.zeros((2, 4)), np.zeros((2, 5), bool))


def test_bfloat16_autocast_trains(tmp_path: Path, data: PackedData) -> None:
    settings = TrainSettings(**{**SETTINGS.__dict__, "dtype": "bfloat16", "epochs": 0.4})
    result = train_loop(small_model(), data, settings, tmp_path, fingerprint="f")
    assert result.completed and math.isfinite(result.final_loss)

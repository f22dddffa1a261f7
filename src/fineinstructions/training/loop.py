"""A small, readable training loop for decoder-only language models (nanoGPT style, no framework).

One optimizer step consumes `batch_size * grad_accum` packed blocks. The data order is a pure function of the seed
(one permutation of the blocks per epoch, concatenated and cut to `epochs * blocks`), so a run that stops and resumes
from a checkpoint sees exactly the batches an uninterrupted run would see and ends with the same weights.

Loss: next-token cross entropy, averaged over the target tokens whose `loss_mask` is True, weighted by tokens over the
whole optimizer step (so gradient accumulation and masking do not change the objective). Learning rate: linear warmup,
then cosine decay to `min_lr`; it is a pure function of the step, so the "scheduler state" is the step.

Checkpoints (`out_dir/checkpoints/step-NNNNNN/`) hold the model weights (safetensors via `save_pretrained`), the
optimizer state, RNG states, the data order and `state.json` (step, counters, fingerprint). Each is written into a
temporary folder and renamed into place; only the newest `keep_checkpoints` are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from fineinstructions.errors import FineInstructionsError
from fineinstructions.hashing import json_hash
from fineinstructions.io.atomic import atomic_dir, write_text_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedModel

CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
STATE = "state.json"
TRAINER_STATE = "trainer_state.pt"
ORDER = "data_order.npy"

# Settings that only change how a run is observed or saved: a checkpoint written under other values still resumes.
_NOT_FINGERPRINTED = {"log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "device"}


class CheckpointMismatch(FineInstructionsError):
    """The checkpoint in the output folder was written by a different configuration."""


class TrainingError(FineInstructionsError):
    """The training inputs cannot be trained on (empty data, wrong shapes, bad settings)."""


@dataclass
class TrainSettings:
    """Hyper-parameters of one training run. `min_lr` None means lr / 10; `warmup_steps` None means 5 % of the
    steps (at least 1, at most 200)."""

    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        positive = ("seq_len", "batch_size", "grad_accum", "log_every", "eval_every", "checkpoint_every",
                    "keep_checkpoints")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seq_len < 2:
            raise TrainingError("seq_len must be at least 2 (one input and one target token)")
        if self.lr <= 0 or self.epochs <= 0:
            raise TrainingError(f"lr and epochs must be positive, got lr={self.lr}, epochs={self.epochs}")
        if self.dtype not in ("float32", "bfloat16"):
            raise TrainingError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise TrainingError(f"device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def blocks_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def resolved_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def resolved_warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, min(200, total_steps // 20))


@dataclass
class PackedData:
    """Packed training blocks: `input_ids` [n, seq_len] int32 and `loss_mask` [n, seq_len] bool (True: the token
    is a training target)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray

    def __post_init__(self) -> None:
        if self.input_ids.ndim != 2 or self.input_ids.shape != self.loss_mask.shape:
            raise TrainingError(f"input_ids and loss_mask must both be [blocks, seq_len], got "
                                f"{self.input_ids.shape} and {self.loss_mask.shape}")
        self.input_ids = np.ascontiguousarray(self.input_ids, dtype=np.int32)
        self.loss_mask = np.ascontiguousarray(self.loss_mask, dtype=bool)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.size)

    @property
    def num_loss_tokens(self) -> int:
        """Tokens that are predicted and trained on (the first token of a block is never a target)."""
        return int(self.loss_mask[:, 1:].sum())

    def sha(self) -> str:
        digest = hashlib.sha256()
        digest.update(str(self.input_ids.shape).encode())
        digest.update(self.input_ids.tobytes())
        digest.update(np.packbits(self.loss_mask).tobytes())
        return digest.hexdigest()[:16]

    def slice(self, rows: np.ndarray | slice) -> PackedData:
        return PackedData(self.input_ids[rows], self.loss_mask[rows])


@dataclass
class TrainResult:
    """What a training call achieved. `final_loss` is the loss of the last optimizer step; `tokens_per_s` counts
    input tokens over training time only (no eval, no checkpoint writes), across resumed calls."""

    steps: int
    total_steps: int
    tokens_seen: int
    loss_tokens_seen: int
    final_loss: float
    eval_loss: float | None
    tokens_per_s: float
    seconds: float
    completed: bool
    resumed_from: int = 0
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------- helpers


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def data_order(n_blocks: int, epochs: float, seed: int) -> np.ndarray:
    """Block indices in training order: one seeded permutation per epoch, cut to round(epochs * n_blocks)."""
    total = int(round(epochs * n_blocks))
    if total < 1:
        raise TrainingError(f"{epochs} epochs of {n_blocks} blocks is less than one block to train on")
    parts = [np.random.default_rng([seed, epoch]).permutation(n_blocks) for epoch in range(math.ceil(total / n_blocks))]
    return np.concatenate(parts)[:total].astype(np.int64)


def lr_at(step: int, settings: TrainSettings, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine decay to min_lr."""
    warmup = settings.resolved_warmup(total_steps)
    min_lr = settings.resolved_min_lr()
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    if total_steps <= warmup:
        return settings.lr
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup - 1))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (settings.lr - min_lr)


def make_optimizer(model: nn.Module, settings: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: no decay on norms, biases or embeddings."""
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 and id(param) not in embedding_ids else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def masked_loss_sum(model: nn.Module, input_ids: torch.Tensor,
                    loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token cross entropy over masked-in targets, and how many targets that is (both tensors, so a
    GPU is not synchronised)."""
    logits = model(input_ids=input_ids).logits[:, :-1]
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    losses = nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                         reduction="none")
    return (losses * mask.reshape(-1)).sum(), mask.sum()


@torch.no_grad()
def evaluate_loss(model: nn.Module, data: PackedData, batch_size: int, device: torch.device,
                  dtype: str = "float32") -> float:
    """Mean next-token loss over the masked-in targets of `data`."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        ids = torch.from_numpy(data.input_ids[start:start + batch_size]).long().to(device)
        mask = torch.from_numpy(data.loss_mask[start:start + batch_size]).to(device)
        with _autocast(device, dtype):
            loss_sum, n = masked_loss_sum(model, ids, mask)
        total += float(loss_sum)
        count += int(n)
    model.train(was_training)
    return total / max(1, count)


def run_fingerprint(model: nn.Module, train: PackedData, settings: TrainSettings, fingerprint: str) -> dict[str, Any]:
    """The parts a checkpoint must agree on to be resumed: caller's fingerprint, settings, data, model shape."""
    config = getattr(model, "config", None)
    model_desc = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    model_desc = {k: v for k, v in model_desc.items() if not k.startswith("_") and k not in ("transformers_version",)}
    model_desc["parameters"] = sum(p.numel() for p in model.parameters())
    settings_desc = {k: v for k, v in asdict(settings).items() if k not in _NOT_FINGERPRINTED}
    return {
        "fingerprint": fingerprint,
        "settings": settings_desc,
        "data": {"blocks": len(train), "seq_len": train.seq_len, "sha": train.sha()},
        "model": json_hash(model_desc),
    }


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    if saved.get("fingerprint") != current["fingerprint"]:
        out.append(f"run fingerprint {saved.get('fingerprint')} -> {current['fingerprint']}")
    for key, value in current["settings"].items():
        if saved.get("settings", {}).get(key) != value:
            out.append(f"{key} {saved.get('settings', {}).get(key)!r} -> {value!r}")
    for key, value in current["data"].items():
        if saved.get("data", {}).get(key) != value:
            out.append(f"data {key} {saved.get('data', {}).get(key)!r} -> {value!r}")
    if saved.get("model") != current["model"]:
        out.append("model configuration (preset, vocabulary or shape)")
    return out


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Complete checkpoints in `out_dir/checkpoints`, oldest first (temporary folders are ignored)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_pretrained_quietly(model: nn.Module, folder: Path) -> None:
    """`model.save_pretrained(folder)` (safetensors) without transformers' per-shard progress bar."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        cast("PreTrainedModel", model).save_pretrained(folder, safe_serialization=True)
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _save_checkpoint(out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, order: np.ndarray,
                     state: dict[str, Any], keep: int) -> Path:
    target = Path(out_dir) / CHECKPOINTS / f"step-{state['step']:06d}"
    with atomic_dir(target) as tmp:
        if hasattr(model, "save_pretrained"):
            save_pretrained_quietly(model, tmp)
        else:
            import safetensors.torch

            safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": {"step": state["step"]}, "rng": _rng_state()},
                   tmp / TRAINER_STATE)
        np.save(tmp / ORDER, order)
        (tmp / STATE).write_text(json.dumps(state, indent=2, default=str) + "\n", encoding="utf-8")
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _load_weights(model: nn.Module, folder: Path) -> None:
    import safetensors.torch

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointMismatch(f"checkpoint {folder} has no safetensors weights")
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        loaded.update(safetensors.torch.load_file(str(file)))
    missing, unexpected = model.load_state_dict(loaded, strict=False)
    tied_keys: Any = getattr(model, "_tied_weights_keys", None)
    tied = set(tied_keys or [])
    real_missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if unexpected or real_missing:
        raise CheckpointMismatch(f"checkpoint {folder} does not fit the model: missing {real_missing[:5]}, "
                                 f"unexpected {list(unexpected)[:5]}")
    tie_weights = getattr(model, "tie_weights", None)
    if callable(tie_weights):
        tie_weights()


def _rewrite_metrics(path: Path, up_to_step: int) -> None:
    """Keep the metric lines of steps the checkpoint covers (a resumed run writes the later ones again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(line).get("step", 0) <= up_to_step:
                kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


# ------------------------------------------------------------------------------------------------------------- loop


def train_loop(model: nn.Module, train: PackedData, settings: TrainSettings, out_dir: Path, *, fingerprint: str,
               eval_data: PackedData | None = None, console: Any = None, force: bool = False,
               max_steps_this_call: int | None = None) -> TrainResult:
    """Train `model` in place on `train`; resume from the newest checkpoint in `out_dir/checkpoints`.

    Raises CheckpointMismatch when that checkpoint was written by another configuration (fingerprint, settings, data
    or model differ) unless `force`, which deletes the checkpoints and metrics and starts over.
    `max_steps_this_call` stops early (after writing a checkpoint) so a later call resumes; the result then has
    completed=False. A rich progress bar is shown on `console` unless it is None.
    """
    out_dir = Path(out_dir)
    if len(train) == 0:
        raise TrainingError("no training blocks: the packed data is empty")
    if train.seq_len != settings.seq_len:
        raise TrainingError(f"packed blocks are {train.seq_len} tokens long but settings.seq_len is {settings.seq_len}")
    if eval_data is not None and len(eval_data) == 0:
        eval_data = None
    device = resolve_device(settings.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / METRICS
    current = run_fingerprint(model, train, settings, fingerprint)

    order = data_order(len(train), settings.epochs, settings.seed)
    per_step = settings.blocks_per_step
    total_steps = math.ceil(len(order) / per_step)

    model.to(device)
    model.train()
    optimizer = make_optimizer(model, settings, device)
    state: dict[str, Any] = {"step": 0, "tokens_seen": 0, "loss_tokens_seen": 0, "train_seconds": 0.0,
                             "last_loss": float("nan"), "eval_loss": None, "total_steps": total_steps}
    resumed_from = 0
    fresh = True
    checkpoints = list_checkpoints(out_dir)
    if checkpoints:
        newest = checkpoints[-1]
        saved = json.loads((newest / STATE).read_text(encoding="utf-8"))
        diffs = _differences(saved.get("fingerprint", {}), current)
        if diffs and not force:
            raise CheckpointMismatch(
                f"{out_dir} holds a checkpoint ({newest.name}) of a different training configuration: "
                + "; ".join(diffs) + ". Use another output folder, or --force to delete it and start over.")
        if diffs:
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
            metrics_path.unlink(missing_ok=True)
        else:
            _load_weights(model, newest)
            trainer = torch.load(newest / TRAINER_STATE, map_location=device, weights_only=False)
            optimizer.load_state_dict(trainer["optimizer"])
            _set_rng_state(trainer["rng"])
            saved_order = np.load(newest / ORDER)
            if not np.array_equal(saved_order, order):
                raise CheckpointMismatch(f"checkpoint {newest} has a different data order than this run")
            state.update({k: saved[k] for k in state if k in saved})
            resumed_from = state["step"]
            fresh = False
            _rewrite_metrics(metrics_path, resumed_from)
    elif metrics_path.exists():
        metrics_path.unlink()
    if fresh:
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        np.random.seed(settings.seed % 2**32)

    stop_at = total_steps if max_steps_this_call is None else min(total_steps, state["step"] + max_steps_this_call)
    progress = _progress(console, total_steps, state["step"])
    window = {"loss_sum": 0.0, "count": 0, "tokens": 0, "seconds": 0.0}
    last_checkpoint: Path | None = None if fresh else checkpoints[-1]
    try:
        while state["step"] < stop_at:
            step = state["step"]
            lr = lr_at(step, settings, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = order[step * per_step:(step + 1) * per_step]
            started = time.perf_counter()
            step_targets = int(train.loss_mask[rows, 1:].sum())
            step_loss_t = torch.zeros((), device=device)
            for start in range(0, len(rows), settings.batch_size):
                micro = rows[start:start + settings.batch_size]
                ids = torch.from_numpy(train.input_ids[micro]).long().to(device, non_blocking=True)
                mask = torch.from_numpy(train.loss_mask[micro]).to(device, non_blocking=True)
                with _autocast(device, settings.dtype):
                    loss_sum, _ = masked_loss_sum(model, ids, mask)
                loss = loss_sum / max(1, step_targets)
                loss.backward()
                step_loss_t += loss.detach()
            grad_norm_t = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss, grad_norm = float(step_loss_t), float(grad_norm_t)  # one device sync per step
            elapsed = time.perf_counter() - started

            step_tokens = len(rows) * settings.seq_len
            state["step"] = step + 1
            state["tokens_seen"] += step_tokens
            state["loss_tokens_seen"] += step_targets
            state["train_seconds"] += elapsed
            state["last_loss"] = step_loss
            window["loss_sum"] += step_loss * step_targets
            window["count"] += step_targets
            window["tokens"] += step_tokens
            window["seconds"] += elapsed
            done = state["step"]

            evaluate_now = eval_data is not None and (done % settings.eval_every == 0 or done == total_steps)
            if eval_data is not None and evaluate_now:
                state["eval_loss"] = evaluate_loss(model, eval_data, settings.batch_size, device, settings.dtype)
            if done % settings.log_every == 0 or evaluate_now or done in (total_steps, stop_at):
                line = {"step": done, "tokens": state["tokens_seen"], "loss_tokens": state["loss_tokens_seen"],
                        "loss": window["loss_sum"] / max(1, window["count"]), "lr": lr,
                        "tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9), "grad_norm": grad_norm}
                if evaluate_now:
                    line["eval_loss"] = state["eval_loss"]
                with open(metrics_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(line) + "\n")
                window = {"loss_sum": 0.0, "count": 0, "tokens": 0, "seconds": 0.0}
            if done % settings.checkpoint_every == 0 or done in (total_steps, stop_at):
                last_checkpoint = _save_checkpoint(out_dir, model, optimizer, order,
                                                   {**state, "fingerprint": current}, settings.keep_checkpoints)
            if progress is not None:
                progress.update(progress.task_ids[0], completed=done,
                                info=f"loss {step_loss:.3f}  {step_tokens / max(elapsed, 1e-9):,.0f} tok/s")
    finally:
        if progress is not None:
            progress.stop()

    return TrainResult(
        steps=state["step"], total_steps=total_steps, tokens_seen=state["tokens_seen"],
        loss_tokens_seen=state["loss_tokens_seen"], final_loss=float(state["last_loss"]), eval_loss=state["eval_loss"],
        tokens_per_s=state["tokens_seen"] / max(state["train_seconds"], 1e-9), seconds=float(state["train_seconds"]),
        completed=state["step"] >= total_steps, resumed_from=resumed_from,
        checkpoint=str(last_checkpoint) if last_checkpoint else None)


def _progress(console: Any, total: int, done: int) -> Any:
    if console is None:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), console=console, transient=False)
    progress.add_task("train", total=total, completed=done, info="")
    progress.start()
    return progress

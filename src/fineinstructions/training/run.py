"""`fineinstructions train`: pairs vs raw documents, token for token, from scratch.

From a run's kept pairs: hold out some documents (for `evaluate`), build a shared tokenizer, build the two
token-matched arms from the same training documents (see `training.data`), and train one model of the same preset,
initial weights and settings on each. Everything lands in TRAIN_DIR:

    manifest.json     source, fingerprint, settings, tokenizer sha, held-out ids, per-arm budgets and results
    tokenizer/        the shared tokenizer
    heldout.jsonl     {"instruction", "reference", "document_id", "text"} of held-out documents' pairs
    <arm>/            metrics.jsonl, checkpoints/step-NNNNNN/, final/ (model + tokenizer + fineinstructions-model.json)

Rerunning the same command resumes: finished arms are skipped and an interrupted arm continues from its checkpoint.
TRAIN_DIR is claimed like every run folder (`io.run_folder.RunFolder`): locked for the run's life, a non-empty
foreign folder refused, a different configuration refused unless `force` (which deletes the older run's files).
A TRAIN_DIR made before run folders were marked is recognised by its manifest.json (and its fingerprint there).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich import box
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fineinstructions.errors import ConfigChanged
from fineinstructions.hashing import json_hash
from fineinstructions.io.atomic import atomic_dir, write_json_atomic, write_text_atomic
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.training.data import (
    ARMS,
    ArmData,
    PairRow,
    Split,
    build_arms,
    data_sha,
    dataset_files,
    read_pairs,
    split_heldout,
    tokenizer_texts,
)
from fineinstructions.training.loop import (
    TrainingError,
    TrainResult,
    TrainSettings,
    resolve_device,
    save_pretrained_quietly,
    train_loop,
)
from fineinstructions.training.models import PRESETS, build_model, count_parameters, preset_config
from fineinstructions.training.tokenizer import (
    check_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sha,
    train_bpe_tokenizer,
)

MANIFEST = "manifest.json"
HELDOUT = "heldout.jsonl"
TOKENIZER = "tokenizer"
FINAL = "final"
MODEL_CARD = "fineinstructions-model.json"
PROMPT_FORMAT = {"pairs": "chat", "documents": "plain"}
# Settings that do not change what is trained: another value still resumes the same TRAIN_DIR.
_NOT_FINGERPRINTED = {"source", "out", "device", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                      "arms"}


# TRAIN_DIR holds a training run of a different configuration (the one conflict of every run folder).
TrainDirConflict = ConfigChanged




@dataclass
class TrainConfig:
    """Everything `fineinstructions train` takes. `tokens` None: the smaller arm's token count. `tokenizer` None:
    train a byte-level BPE of `vocab_size`. `dtype` "auto": bfloat16 on a CUDA GPU that supports it, else float32."""

    source: str | tuple[str, ...]  # one run/dataset folder or Parquet file, or several (their pairs are pooled)
    out: str
    model_size: str = "tiny"
    seq_len: int = 256
    tokens: int | None = None
    epochs: float = 1.0
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None
    warmup_steps: int | None = None
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    mask_instructions: bool = False
    tokenizer: str | None = None
    vocab_size: int = 8192
    heldout_fraction: float = 0.1
    heldout_documents: int | None = None
    eval_fraction: float = 0.02
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    arms: tuple[str, ...] = ARMS

    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    def validate(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise TrainingError(f"unknown arm(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(ARMS)}")
        preset_config(self.model_size, vocab_size=256, seq_len=self.seq_len)
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise TrainingError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if not 0 <= self.eval_fraction < 0.5:
            raise TrainingError(f"eval fraction must be in [0, 0.5), got {self.eval_fraction}")
        if self.tokens is not None and self.tokens < 1:
            raise TrainingError(f"--tokens must be positive, got {self.tokens}")

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        device = resolve_device(self.device)
        return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"

    def settings(self) -> TrainSettings:
        return TrainSettings(seq_len=self.seq_len, batch_size=self.batch_size, grad_accum=self.grad_accum, lr=self.lr,
                             min_lr=self.min_lr, warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                             max_grad_norm=self.max_grad_norm, epochs=self.epochs, log_every=self.log_every,
                             eval_every=self.eval_every, checkpoint_every=self.checkpoint_every,
                             keep_checkpoints=self.keep_checkpoints, seed=self.seed, device=self.device,
                             dtype=self.resolved_dtype())

    def fingerprinted(self, pairs_sha: str) -> dict[str, Any]:
        """What decides the result: every setting but where/how it runs and is logged, plus the data's hash."""
        values = {k: v for k, v in asdict(self).items() if k not in _NOT_FINGERPRINTED}
        values["dtype"] = self.resolved_dtype()
        values["data_sha"] = pairs_sha
        return values


def fingerprint_of(values: dict[str, Any]) -> str:
    return json_hash(values)


# What a training run makes in TRAIN_DIR (cleared when `force` replaces another configuration's run).
OWNED = (MANIFEST, TOKENIZER, HELDOUT, *ARMS)


def _temporary_folders(out: Path) -> list[Path]:
    """Where a training run writes temporaries: tokenizer/ and the manifest, final/ and metrics, checkpoints."""
    return [out, *(out / arm for arm in ARMS), *(out / arm / "checkpoints" for arm in ARMS)]


def read_manifest(out: Path) -> dict[str, Any] | None:
    """TRAIN_DIR's manifest.json; None when absent, {} when unreadable."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def older_training_run(out: Path) -> str | None:
    """The fingerprint of a training run made before run folders were marked (kept in its manifest.json), or
    "unknown" when the manifest is unreadable; None when the folder holds no such run."""
    manifest = read_manifest(out)
    if manifest is None or manifest.get("kind", "fineinstructions-train") != "fineinstructions-train":
        return None
    return str(manifest.get("fingerprint") or "unknown")


def _what_changed(folder: RunFolder, values: dict[str, Any], fingerprint: str) -> str:
    """The settings that differ from the run in TRAIN_DIR (for the message that refuses it)."""
    manifest = read_manifest(folder.root)
    if manifest:
        old = manifest.get("config", {})
        diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in values.items() if old.get(k) != v]
        return "; ".join(diffs) or "fingerprint"
    leftovers = [name for name in OWNED if (folder.root / name).exists()]
    if manifest is not None:
        return f"no readable {MANIFEST} but {', '.join(leftovers)} exist"
    return f"config fingerprint {folder.stored_fingerprint()}, this config is {fingerprint}"


def _check_train_dir(folder: RunFolder, fingerprint: str, values: dict[str, Any],
                     force: bool) -> tuple[dict[str, Any] | None, bool]:
    """(The manifest of this configuration's run in TRAIN_DIR or None, whether `force` replaces another
    configuration's run); another configuration's run is refused (ConfigChanged) unless `force`. Nothing is
    written here: the claim comes once the inputs proved usable."""
    changed = folder.check(fingerprint, force, "training run", lambda: _what_changed(folder, values, fingerprint))
    manifest = None if changed else read_manifest(folder.root)
    return (manifest if manifest and manifest.get("fingerprint") == fingerprint else None), changed


def write_heldout(path: Path, split: Split) -> None:
    """heldout.jsonl: one line per pair of a held-out document (never trained on by either arm)."""
    lines = [json.dumps({"instruction": p.instruction, "reference": p.answer, "document_id": p.document_id,
                         "text": p.text, "template_id": p.template_id}, ensure_ascii=False) for p in split.heldout]
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def prepare_tokenizer(config: TrainConfig, train_pairs: list[PairRow], folder: Path,
                      reuse: bool = True) -> tuple[PreTrainedTokenizerBase, bool]:
    """The saved tokenizer of this TRAIN_DIR (unless not `reuse`), else a new one (trained BPE or
    `config.tokenizer`); True when new (the caller saves it once the arms are built, so a run refused for too
    little data leaves nothing behind)."""
    if reuse and (folder / "tokenizer_config.json").is_file():
        return check_tokenizer(AutoTokenizer.from_pretrained(str(folder)), str(folder)), False
    if config.tokenizer:
        return load_tokenizer(config.tokenizer), True
    return train_bpe_tokenizer(tokenizer_texts(train_pairs), config.vocab_size), True


def save_final(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path, card: dict[str, Any]) -> None:
    """final/: model + tokenizer + fineinstructions-model.json, atomically."""
    with atomic_dir(folder) as tmp:
        save_pretrained_quietly(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def run_training(config: TrainConfig, console: Console | None = None, force: bool = False,
                 max_steps_this_call: int | None = None) -> dict[str, Any]:
    """Build both arms and train each (resuming what is there); return the manifest.

    TRAIN_DIR is locked for the whole run; another configuration's run there is refused (ConfigChanged) unless
    `force`, which replaces it."""
    config.validate()
    started = time.time()
    pairs = read_pairs(config.sources())
    with RunFolder(config.out, older=older_training_run, kind="training") as folder:
        return _run_training(folder, config, pairs, started, console, force, max_steps_this_call)


def _run_training(folder: RunFolder, config: TrainConfig, pairs: list[PairRow], started: float,
                  console: Console | None, force: bool, max_steps_this_call: int | None) -> dict[str, Any]:
    out = folder.root
    values = config.fingerprinted(data_sha(pairs))
    fingerprint = fingerprint_of(values)
    existing, replacing = _check_train_dir(folder, fingerprint, values, force)

    split = split_heldout(pairs, config.heldout_fraction, config.heldout_documents)
    tokenizer, new_tokenizer = prepare_tokenizer(config, split.train, out / TOKENIZER, reuse=not replacing)
    tok_sha = tokenizer_sha(tokenizer)
    if existing and existing.get("tokenizer", {}).get("sha") not in (None, tok_sha):
        raise TrainDirConflict(f"{out / TOKENIZER} is not the tokenizer this run was trained with "
                               f"(sha {tok_sha} vs {existing['tokenizer']['sha']}); use --force to start over")
    arms = build_arms(tokenizer, split.train, config.seq_len, config.seed, config.tokens, config.mask_instructions,
                      config.eval_fraction)
    # Nothing is written before the inputs proved usable: then the folder is claimed (an older configuration's
    # run deleted under `force`, the half-written files of a killed run swept, the fingerprint written).
    folder.claim(fingerprint, force=force, derived=OWNED, what="training run",
                 describe=lambda: _what_changed(folder, values, fingerprint), temporaries=_temporary_folders(out))
    write_heldout(out / HELDOUT, split)
    if new_tokenizer:
        save_tokenizer(tokenizer, out / TOKENIZER)
    vocab = len(tokenizer)
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
               "bos_token_id": tokenizer.bos_token_id}
    first = next(iter(arms.values()))
    manifest: dict[str, Any] = {
        "kind": "fineinstructions-train",
        "fingerprint": fingerprint,
        "config": values,
        "source": [str(Path(one).expanduser().resolve()) for one in config.sources()],
        "source_files": [str(p) for p in dataset_files(config.sources())],
        "model_preset": config.model_size,
        "model_config": PRESETS[config.model_size] | {"vocab_size": vocab},
        "parameters": None,
        "seq_len": config.seq_len,
        "settings": asdict(config.settings()),
        "mask_instructions": config.mask_instructions,
        "tokenizer": {"source": config.tokenizer or f"bpe-{config.vocab_size}", "sha": tok_sha, "vocab_size": vocab,
                      "eos_token": tokenizer.eos_token, "path": TOKENIZER},
        "heldout": {"fraction": config.heldout_fraction, "documents_requested": config.heldout_documents,
                    "documents": len(split.heldout_ids), "pairs": len(split.heldout), "file": HELDOUT,
                    "document_ids": split.heldout_ids},
        "training_pairs": len(split.train),
        "training_documents": len({p.document_id for p in split.train}),
        "token_budget": {"requested": config.tokens, "train_blocks": len(first.train),
                         "tokens_per_epoch": first.train.num_tokens, "epochs": config.epochs,
                         "tokens_total": int(round(config.epochs * len(first.train))) * config.seq_len,
                         "eval_blocks": arms["pairs"].counts()["eval_blocks"],
                         "eval_choice": "last blocks of each arm's own packing; training blocks are the first "
                                        "min(budget, blocks - eval) of each arm"},
        "arms": {name: arm.counts() | {"status": "pending", "dir": name, "final": f"{name}/{FINAL}",
                                       "prompt_format": PROMPT_FORMAT[name]} for name, arm in arms.items()},
        "created": (existing or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
    }
    for name, old in ((existing or {}).get("arms") or {}).items():
        if name in manifest["arms"] and old.get("status") == "done":
            manifest["arms"][name].update({k: old[k] for k in ("status", "result") if k in old})
    write_json_atomic(out / MANIFEST, manifest)

    for name in config.arms:
        entry = manifest["arms"][name]
        final = out / name / FINAL
        if entry.get("status") == "done" and (final / MODEL_CARD).is_file():
            if console is not None:
                console.print(f"[green]{name}[/green]: already trained ({final})")
            continue
        model = build_model(config.model_size, vocab, config.seed, config.seq_len, **special)
        manifest["parameters"] = count_parameters(model)
        if console is not None:
            console.print(f"[bold]{name}[/bold]: {len(arms[name].train):,} blocks x {config.seq_len} tokens, "
                          f"{config.epochs:g} epoch(s), {config.model_size} model "
                          f"({manifest['parameters'] / 1e6:.1f}M parameters)")
        result = _train_arm(model, arms[name], config, out / name, f"{fingerprint}:{name}", console, force,
                            max_steps_this_call)
        entry["result"] = result.to_json()
        entry["status"] = "done" if result.completed else "interrupted"
        if result.completed:
            card = {"trained_on": name, "prompt_format": PROMPT_FORMAT[name], "tokens_seen": result.tokens_seen,
                    "loss_tokens_seen": result.loss_tokens_seen, "config_fingerprint": fingerprint,
                    "tokenizer_sha": tok_sha, "model_preset": config.model_size,
                    "parameters": manifest["parameters"], "seq_len": config.seq_len,
                    "mask_instructions": config.mask_instructions, "source": manifest["source"],
                    "final_loss": result.final_loss, "eval_loss": result.eval_loss}
            save_final(model, tokenizer, final, card)
        write_json_atomic(out / MANIFEST, manifest)
        if not result.completed:
            break
    if manifest["parameters"] is None:
        with torch.device("meta"):
            manifest["parameters"] = count_parameters(build_model(config.model_size, vocab, 0, config.seq_len))
    manifest["seconds"] = round(time.time() - started, 2)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _train_arm(model: torch.nn.Module, arm: ArmData, config: TrainConfig, arm_dir: Path, fingerprint: str,
               console: Console | None, force: bool, max_steps_this_call: int | None) -> TrainResult:
    return train_loop(model, arm.train, config.settings(), arm_dir, fingerprint=fingerprint, eval_data=arm.eval,
                      console=console, force=force, max_steps_this_call=max_steps_this_call)


def summary_table(manifest: dict[str, Any]) -> Table:
    """Per arm: tokens and loss tokens per epoch, blocks, epochs, steps, losses, tokens/s and seconds."""
    table = Table(title=f"train: {manifest['model_preset']} model ({(manifest.get('parameters') or 0) / 1e6:.1f}M "
                        f"parameters), seq_len {manifest['seq_len']}, {manifest['token_budget']['epochs']:g} epoch(s)",
                  caption=f"tokens, loss tokens (trained-on targets): per epoch; tokenizer "
                          f"{manifest['tokenizer']['sha']}",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    rows = []
    for name, arm in manifest["arms"].items():
        result = arm.get("result") or {}

        def fmt(key: str, spec: str, result: dict[str, Any] = result) -> str:
            value = result.get(key)
            return "-" if value is None else format(value, spec)

        steps = f"{result['steps']}/{result['total_steps']}" if result else "-"
        rows.append([name, f"{arm['train_tokens']:,}", f"{arm['train_loss_tokens']:,}", f"{arm['train_blocks']:,}",
                     steps, fmt("final_loss", ".3f"), fmt("eval_loss", ".3f"),
                     fmt("tokens_per_s", ",.0f"), fmt("seconds", ".1f")])
    headers = ("arm", "tokens", "loss tokens", "blocks", "steps", "train loss", "eval loss", "tok/s",
               "secs")
    for i, column in enumerate(headers):
        # Values never fold; headers may wrap onto two lines on a narrow terminal.
        table.add_column(column, justify="left" if i == 0 else "right",
                         min_width=max(len(row[i]) for row in rows), no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    return table

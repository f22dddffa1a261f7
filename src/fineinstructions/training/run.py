"""`fineinstructions train`: same-size models trained from scratch on token-matched arms.

The arms (see `training.data`) are either the two of a run's kept pairs — the pairs themselves and the raw documents
they came from — or any number named with `ArmSpec`s: FineInstructions pairs in the paper's
`Instruction: ...\n\nAnswer: ...` frame, a baseline recipe's texts, the raw documents a run read. Documents are held
out across every arm (for `evaluate`), one tokenizer is built for all of them, every arm is cut to the same number
of tokens, and one model of the same preset is trained per arm and seed, with the same initial weights, optimizer,
batches and steps for every arm of a seed. Everything lands in TRAIN_DIR:

    manifest.json     sources, fingerprint, settings, tokenizer sha, held-out ids, per-arm budgets, per-model results
    tokenizer/        the shared tokenizer
    heldout.jsonl     {"instruction", "reference", "document_id", "text"} of held-out documents' pairs
    <model>/          metrics.jsonl, checkpoints/step-NNNNNN/, final/ (model + tokenizer + fineinstructions-model.json)

A model is named after its arm (`<arm>` with one seed, `<arm>-seed<S>` with several).

Rerunning the same command resumes: finished models are skipped and an interrupted one continues from its checkpoint.
TRAIN_DIR is claimed like every run folder (`io.run_folder.RunFolder`): locked for the run's life, a non-empty
foreign folder refused, a different configuration refused unless `force` (which deletes the older run's files).
A TRAIN_DIR made before run folders were marked is recognised by its manifest.json (and its fingerprint there).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
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
    PAIR_FORMATS,
    ArmData,
    ArmRows,
    ArmSpec,
    PairRow,
    arm_documents,
    arm_tokenizer_texts,
    arms_sha,
    dataset_files,
    encode_arms,
    heldout_ids,
    match_arms,
    pair_documents,
    read_arm,
)
from fineinstructions.training.loop import (
    TrainingError,
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
# Settings that do not change what is trained: another value still resumes the same TRAIN_DIR.
_NOT_FINGERPRINTED = {"source", "out", "device", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                      "arms", "arm_specs"}


# TRAIN_DIR holds a training run of a different configuration (the one conflict of every run folder).
TrainDirConflict = ConfigChanged




@dataclass
class TrainConfig:
    """Everything `fineinstructions train` takes. Arms: `arm_specs`, or, when none are given, the pairs of `source`
    and their documents. `tokens` None: the smallest arm's token count. `tokenizer` None: train a byte-level BPE of
    `vocab_size`. `dtype` "auto": bfloat16 on a CUDA GPU that supports it, else float32. `seeds` models per arm,
    seeded `seed`, `seed + 1`, ... (each seed: its own initial weights, data order and packing, the same for every
    arm)."""

    source: str | tuple[str, ...] = ()  # one run/dataset folder or Parquet file, or several (their pairs are pooled)
    out: str = ""
    arm_specs: tuple[ArmSpec, ...] = ()
    pair_format: str = "instruction"
    seeds: int = 1
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
    arms: tuple[str, ...] = ()  # which arms to train now (empty: all); the others keep what they have

    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    def specs(self) -> tuple[ArmSpec, ...]:
        """The arms: as given, else the pairs of `source` and the documents they came from."""
        if self.arm_specs:
            return self.arm_specs
        return (ArmSpec("pairs", "pairs", self.sources()), ArmSpec("documents", "documents", self.sources()))

    def seed_list(self) -> list[int]:
        return [self.seed + k for k in range(self.seeds)]

    def model_name(self, arm: str, seed: int) -> str:
        """The folder and evaluation name of one arm's model of one seed."""
        return arm if self.seeds == 1 else f"{arm}-seed{seed}"

    def validate(self) -> None:
        if not self.arm_specs and not self.sources():
            raise TrainingError("name a source of pairs or at least one arm (--arm NAME=KIND:PATH)")
        if not self.out:
            raise TrainingError("name the training run's output folder (--out)")
        names = [spec.name for spec in self.specs()]
        if len(set(names)) != len(names):
            raise TrainingError(f"arm names must differ, got {', '.join(names)}")
        unknown = [a for a in self.arms if a not in names]
        if unknown:
            raise TrainingError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        if self.pair_format not in PAIR_FORMATS:
            raise TrainingError(f"pair format must be one of {', '.join(PAIR_FORMATS)}, got {self.pair_format!r}")
        if self.seeds < 1:
            raise TrainingError(f"--seeds must be at least 1, got {self.seeds}")
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

    def fingerprinted(self, data_hash: str) -> dict[str, Any]:
        """What decides the result: every setting but where/how it runs and is logged, the arms' names and kinds,
        and the data's hash."""
        values = {k: v for k, v in asdict(self).items() if k not in _NOT_FINGERPRINTED}
        values["dtype"] = self.resolved_dtype()
        values["arm_kinds"] = {spec.name: spec.kind for spec in self.specs()}
        values["data_sha"] = data_hash
        return values


def fingerprint_of(values: dict[str, Any]) -> str:
    return json_hash(values)


# What a training run makes in TRAIN_DIR besides its models' folders (all cleared when `force` replaces another
# configuration's run).
OWNED = (MANIFEST, TOKENIZER, HELDOUT)


def _owned(out: Path, models: list[str]) -> tuple[str, ...]:
    """Everything a training run makes in TRAIN_DIR: its files, its models' folders and those the manifest of an
    older run there names."""
    older = list(((read_manifest(out) or {}).get("models") or {}).keys())
    legacy = [name for name in ("pairs", "documents") if (out / name / "metrics.jsonl").exists()]
    return tuple(dict.fromkeys([*OWNED, *models, *older, *legacy]))


def _temporary_folders(out: Path, models: list[str]) -> list[Path]:
    """Where a training run writes temporaries: tokenizer/ and the manifest, final/ and metrics, checkpoints."""
    return [out, *(out / name for name in models), *(out / name / "checkpoints" for name in models)]


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
    leftovers = [name for name in _owned(folder.root, []) if (folder.root / name).exists()]
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


def write_heldout(path: Path, heldout: list[PairRow]) -> None:
    """heldout.jsonl: one line per pair of a held-out document (never trained on by any arm)."""
    lines = [json.dumps({"instruction": p.instruction, "reference": p.answer, "document_id": p.document_id,
                         "text": p.text, "template_id": p.template_id}, ensure_ascii=False) for p in heldout]
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))


@dataclass
class ArmsSplit:
    """Every arm's training rows, the held-out documents' pairs, and the held-out document ids."""

    train: dict[str, ArmRows]
    heldout: list[PairRow]
    heldout_ids: list[str]


def split_arms(rows: dict[str, ArmRows], fraction: float, documents: int | None) -> ArmsSplit:
    """Hold out documents by a hash of their id across every arm (see `training.data.heldout_ids`); an exact
    number of documents is counted among the pairs arms' documents where there are any (so their pairs are what
    heldout.jsonl holds), else among all."""
    pair_ids = {r.document_id for arm in rows.values() for r in arm if isinstance(r, PairRow)}
    ids = pair_ids if documents is not None and pair_ids else {r.document_id for arm in rows.values() for r in arm}
    held = heldout_ids(ids, fraction, documents)
    train: dict[str, ArmRows] = {}
    for name, arm in rows.items():
        kept = [r for r in arm if r.document_id not in held]
        if not kept:
            raise TrainingError(f"arm {name!r} has no rows left once {len(held)} documents are held out")
        train[name] = kept  # type: ignore[assignment]
    heldout = [r for arm in rows.values() for r in arm if isinstance(r, PairRow) and r.document_id in held]
    return ArmsSplit(train, heldout, sorted(held))


def read_arms(config: TrainConfig) -> dict[str, ArmRows]:
    """Every arm's rows, read from its sources."""
    if config.arm_specs:
        return {spec.name: read_arm(spec) for spec in config.arm_specs}
    pairs = read_arm(ArmSpec("pairs", "pairs", config.sources()))
    return {"pairs": pairs, "documents": pair_documents([p for p in pairs if isinstance(p, PairRow)])}


def prepare_tokenizer(config: TrainConfig, train_rows: dict[str, ArmRows], folder: Path,
                      reuse: bool = True) -> tuple[PreTrainedTokenizerBase, bool]:
    """The saved tokenizer of this TRAIN_DIR (unless not `reuse`), else a new one (trained BPE or
    `config.tokenizer`); True when new (the caller saves it once the arms are built, so a run refused for too
    little data leaves nothing behind)."""
    if reuse and (folder / "tokenizer_config.json").is_file():
        return check_tokenizer(AutoTokenizer.from_pretrained(str(folder)), str(folder)), False
    if config.tokenizer:
        return load_tokenizer(config.tokenizer), True
    return train_bpe_tokenizer(arm_tokenizer_texts(train_rows), config.vocab_size), True


def save_final(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path, card: dict[str, Any]) -> None:
    """final/: model + tokenizer + fineinstructions-model.json, atomically."""
    with atomic_dir(folder) as tmp:
        save_pretrained_quietly(model, tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def run_training(config: TrainConfig, console: Console | None = None, force: bool = False,
                 max_steps_this_call: int | None = None) -> dict[str, Any]:
    """Build every arm and train each arm's model(s) (resuming what is there); return the manifest.

    TRAIN_DIR is locked for the whole run; another configuration's run there is refused (ConfigChanged) unless
    `force`, which replaces it."""
    config.validate()
    started = time.time()
    rows = read_arms(config)
    with RunFolder(config.out, older=older_training_run, kind="training") as folder:
        return _run_training(folder, config, rows, started, console, force, max_steps_this_call)


def _prompt_format(config: TrainConfig, spec: ArmSpec) -> str:
    """How a model of this arm is prompted: pairs in their training frame; every other arm, trained on raw text,
    in the paper's `Instruction:/Answer:` frame (except a two-arm run from pairs alone with `pair_format` chat,
    as this project ran before the frame: its documents model is prompted as a plain base LM)."""
    if spec.kind == "pairs":
        return config.pair_format
    return "plain" if not config.arm_specs and config.pair_format == "chat" else "instruction"


def _run_training(folder: RunFolder, config: TrainConfig, rows: dict[str, ArmRows], started: float,
                  console: Console | None, force: bool, max_steps_this_call: int | None) -> dict[str, Any]:
    out = folder.root
    specs = {spec.name: spec for spec in config.specs()}
    values = config.fingerprinted(arms_sha(rows))
    fingerprint = fingerprint_of(values)
    existing, replacing = _check_train_dir(folder, fingerprint, values, force)

    split = split_arms(rows, config.heldout_fraction, config.heldout_documents)
    tokenizer, new_tokenizer = prepare_tokenizer(config, split.train, out / TOKENIZER, reuse=not replacing)
    tok_sha = tokenizer_sha(tokenizer)
    if existing and existing.get("tokenizer", {}).get("sha") not in (None, tok_sha):
        raise TrainDirConflict(f"{out / TOKENIZER} is not the tokenizer this run was trained with "
                               f"(sha {tok_sha} vs {existing['tokenizer']['sha']}); use --force to start over")
    encoded = encode_arms(tokenizer, split.train, config.mask_instructions, config.pair_format)
    documents = arm_documents(split.train)

    def arms_of(seed: int) -> dict[str, ArmData]:
        return match_arms(encoded, config.seq_len, seed, config.tokens, config.eval_fraction, documents)

    first_seed = arms_of(config.seed)  # proves the budget fits before anything is written
    models = {config.model_name(arm, seed): (arm, seed) for seed in config.seed_list() for arm in specs}
    # Nothing is written before the inputs proved usable: then the folder is claimed (an older configuration's
    # run deleted under `force`, the half-written files of a killed run swept, the fingerprint written).
    folder.claim(fingerprint, force=force, derived=_owned(out, list(models)), what="training run",
                 describe=lambda: _what_changed(folder, values, fingerprint),
                 temporaries=_temporary_folders(out, list(models)))
    write_heldout(out / HELDOUT, split.heldout)
    if new_tokenizer:
        save_tokenizer(tokenizer, out / TOKENIZER)
    vocab = len(tokenizer)
    first = next(iter(first_seed.values()))
    manifest: dict[str, Any] = {
        "kind": "fineinstructions-train",
        "fingerprint": fingerprint,
        "config": values,
        "source": [str(Path(one).expanduser().resolve()) for spec in specs.values() for one in spec.sources],
        "source_files": [str(p) for spec in specs.values() if spec.kind != "documents"
                         for p in dataset_files(spec.sources)],
        "model_preset": config.model_size,
        "model_config": PRESETS[config.model_size] | {"vocab_size": vocab},
        "parameters": None,
        "seq_len": config.seq_len,
        "seeds": config.seed_list(),
        "settings": asdict(config.settings()),
        "mask_instructions": config.mask_instructions,
        "pair_format": config.pair_format,
        "tokenizer": {"source": config.tokenizer or f"bpe-{config.vocab_size}", "sha": tok_sha, "vocab_size": vocab,
                      "eos_token": tokenizer.eos_token, "path": TOKENIZER},
        "heldout": {"fraction": config.heldout_fraction, "documents_requested": config.heldout_documents,
                    "documents": len(split.heldout_ids), "pairs": len(split.heldout), "file": HELDOUT,
                    "document_ids": split.heldout_ids},
        "training_pairs": sum(len(r) for r in split.train.values() if r and isinstance(r[0], PairRow)),
        "training_documents": len({r.document_id for arm in split.train.values() for r in arm}),
        "token_budget": {"requested": config.tokens, "train_blocks": len(first.train),
                         "tokens_per_epoch": first.train.num_tokens, "epochs": config.epochs,
                         "tokens_total": int(round(config.epochs * len(first.train))) * config.seq_len,
                         "eval_blocks": first.counts()["eval_blocks"],
                         "eval_choice": "last blocks of each arm's own packing; training blocks are the first "
                                        "min(budget, blocks - eval) of each arm"},
        "arms": {name: arm.counts() | {"kind": specs[name].kind, "sources": list(specs[name].sources),
                                       "prompt_format": _prompt_format(config, specs[name])}
                 for name, arm in first_seed.items()},
        "models": {key: {"arm": arm, "seed": seed, "status": "pending", "dir": key, "final": f"{key}/{FINAL}",
                         "prompt_format": _prompt_format(config, specs[arm])}
                   for key, (arm, seed) in models.items()},
        "created": (existing or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
    }
    for key, old in ((existing or {}).get("models") or {}).items():
        if key in manifest["models"] and old.get("status") == "done":
            manifest["models"][key].update({k: old[k] for k in ("status", "result") if k in old})
    write_json_atomic(out / MANIFEST, manifest)

    wanted = set(config.arms or specs)
    for seed in config.seed_list():
        arms = first_seed if seed == config.seed else None
        for arm_name in (name for name in specs if name in wanted):
            key = config.model_name(arm_name, seed)
            entry = manifest["models"][key]
            final = out / key / FINAL
            if entry.get("status") == "done" and (final / MODEL_CARD).is_file():
                if console is not None:
                    console.print(f"[green]{key}[/green]: already trained ({final})")
                continue
            arms = arms or arms_of(seed)
            completed = _train_model(manifest, key, arms[arm_name], seed, config, out, tokenizer, fingerprint,
                                     console, force, max_steps_this_call)
            write_json_atomic(out / MANIFEST, manifest)
            if not completed:
                return _finish(manifest, config, vocab, started, out)
    return _finish(manifest, config, vocab, started, out)


def _train_model(manifest: dict[str, Any], key: str, arm: ArmData, seed: int, config: TrainConfig, out: Path,
                 tokenizer: PreTrainedTokenizerBase, fingerprint: str, console: Console | None, force: bool,
                 max_steps_this_call: int | None) -> bool:
    """Train one arm's model of one seed (resuming its checkpoint), record the result; True when it finished."""
    entry = manifest["models"][key]
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
               "bos_token_id": tokenizer.bos_token_id}
    model = build_model(config.model_size, len(tokenizer), seed, config.seq_len, **special)
    manifest["parameters"] = count_parameters(model)
    if console is not None:
        console.print(f"[bold]{key}[/bold]: {len(arm.train):,} blocks x {config.seq_len} tokens, "
                      f"{config.epochs:g} epoch(s), {config.model_size} model "
                      f"({manifest['parameters'] / 1e6:.1f}M parameters), seed {seed}")
    settings = replace(config.settings(), seed=seed)
    result = train_loop(model, arm.train, settings, out / key, fingerprint=f"{fingerprint}:{key}",
                        eval_data=arm.eval, console=console, force=force, max_steps_this_call=max_steps_this_call)
    entry["result"] = result.to_json()
    entry["status"] = "done" if result.completed else "interrupted"
    if result.completed:
        card = {"trained_on": entry["arm"], "arm_kind": manifest["arms"][entry["arm"]]["kind"], "seed": seed,
                "prompt_format": entry["prompt_format"], "tokens_seen": result.tokens_seen,
                "loss_tokens_seen": result.loss_tokens_seen, "config_fingerprint": fingerprint,
                "tokenizer_sha": manifest["tokenizer"]["sha"], "model_preset": config.model_size,
                "parameters": manifest["parameters"], "seq_len": config.seq_len,
                "mask_instructions": config.mask_instructions, "source": manifest["arms"][entry["arm"]]["sources"],
                "final_loss": result.final_loss, "eval_loss": result.eval_loss}
        save_final(model, tokenizer, out / key / FINAL, card)
    return result.completed


def _finish(manifest: dict[str, Any], config: TrainConfig, vocab: int, started: float, out: Path) -> dict[str, Any]:
    if manifest["parameters"] is None:
        with torch.device("meta"):
            manifest["parameters"] = count_parameters(build_model(config.model_size, vocab, 0, config.seq_len))
    manifest["seconds"] = round(time.time() - started, 2)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def summary_table(manifest: dict[str, Any]) -> Table:
    """Per model: its arm's tokens and loss tokens per epoch, blocks, steps, losses, tokens/s and seconds."""
    table = Table(title=f"train: {manifest['model_preset']} model ({(manifest.get('parameters') or 0) / 1e6:.1f}M "
                        f"parameters), seq_len {manifest['seq_len']}, {manifest['token_budget']['epochs']:g} epoch(s)",
                  caption=f"tokens, loss tokens (trained-on targets): per epoch; tokenizer "
                          f"{manifest['tokenizer']['sha']}",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    rows = []
    for key, model in manifest_models(manifest).items():
        arm = manifest["arms"][model.get("arm", key)]
        result = model.get("result") or {}

        def fmt(name: str, spec: str, result: dict[str, Any] = result) -> str:
            value = result.get(name)
            return "-" if value is None else format(value, spec)

        steps = f"{result['steps']}/{result['total_steps']}" if result else "-"
        rows.append([key, f"{arm['train_tokens']:,}", f"{arm['train_loss_tokens']:,}", f"{arm['train_blocks']:,}",
                     steps, fmt("final_loss", ".3f"), fmt("eval_loss", ".3f"),
                     fmt("tokens_per_s", ",.0f"), fmt("seconds", ".1f")])
    headers = ("model", "tokens", "loss tokens", "blocks", "steps", "train loss", "eval loss", "tok/s",
               "secs")
    for i, column in enumerate(headers):
        # Values never fold; headers may wrap onto two lines on a narrow terminal.
        table.add_column(column, justify="left" if i == 0 else "right",
                         min_width=max(len(row[i]) for row in rows), no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    return table


def manifest_models(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The models of a training manifest by name (a manifest written before arms had seeds kept them in "arms")."""
    if "models" in manifest:
        return dict(manifest["models"])
    return {name: entry | {"arm": name, "final": entry.get("final", f"{name}/{FINAL}")}
            for name, entry in manifest["arms"].items()}

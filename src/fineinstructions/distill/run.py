"""Distill one stage end to end: teacher data -> supervised fine-tuning of the student -> a model folder,
then (optionally) the stage itself run by teacher and student on held-out inputs.

Output folder:

    OUT/teacher-cache.sqlite   every finished teacher call (a killed run resumes without paying twice)
    OUT/examples.parquet       the kept examples {messages, completion, stage, prompt_version, teacher_model, ...}
    OUT/train/                 metrics.jsonl and checkpoints/ of the training loop (removed once final/ exists)
    OUT/final/                 the student: save_pretrained(model + tokenizer) + fineinstructions-model.json
    OUT/distill.json           summary: examples kept and rejected by reason, steps, loss, tokens/s, eval

OUT is claimed like every run folder (`io.run_folder.RunFolder`): locked for the run's life, a non-empty foreign
folder refused, another configuration's run refused unless `force`. Rerunning the same configuration resumes
(teacher calls from the cache, training from its checkpoint); a finished run is redone only under `force`, which
keeps the teacher's cache and deletes the rest. A folder made before run folders were marked is adopted.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fineinstructions.backends.base import Backend
from fineinstructions.config import BackendConfig
from fineinstructions.distill.examples import (
    DistillError,
    Example,
    TeacherReport,
    check_stage,
    generate_examples,
    input_id,
    load_inputs,
    make_stage,
    prompt_versions,
    read_examples,
    split_heldout,
    write_examples,
)
from fineinstructions.hashing import json_hash
from fineinstructions.io.run_folder import RunFolder

EXAMPLES_FILE = "examples.parquet"
CACHE_FILE = "teacher-cache.sqlite"
SUMMARY_FILE = "distill.json"
DEFAULT_TEACHER = "qwen2.5-coder-1.5b-instruct"
# What a distillation makes besides the teacher's cache (deleted when `force` redoes or replaces a run).
DERIVED = ("train", "final", EXAMPLES_FILE, SUMMARY_FILE)
# Settings that change where or how fast a run goes, not what it makes: another value resumes the same folder.
_NOT_FINGERPRINTED = {"out", "device", "force", "checkpoint_every", "teacher_batch_size"}


@dataclass
class DistillSettings:
    """Everything one distillation run needs; the defaults are the fine-tuning defaults of the CLI."""

    stage: str
    student: str
    out: Path
    inputs: str | None = None  # queries (file or `sharegpt`) or matches (run folder or file)
    teacher: BackendConfig = field(default_factory=lambda: BackendConfig(kind="auto", model=DEFAULT_TEACHER))
    examples: Path | None = None  # skip the teacher: train on this examples file
    extra_examples: Path | None = None  # added to the teacher's examples (e.g. hand-written ones)
    limit: int | None = None  # inputs the teacher answers (held-out eval inputs come on top)
    teacher_prompt_version: str | None = None  # default: the stage's default (few-shot) prompt
    student_prompt_version: str | None = None  # default: the stage's zero-shot preset of the released models
    teacher_batch_size: int = 8
    teacher_max_tokens: int | None = None  # default: the stage's max_tokens
    retries: int = 0  # templatize: retries of a rejected query at the stage's retry temperature
    max_null_share: float = 0.25  # instantiate: most of the examples that may be "null"
    filter_queries: bool = True
    epochs: float = 2.0
    lr: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_seq_len: int = 1024
    pack: bool = False
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    chat_template: str | None = None
    save_dtype: str = "auto"  # auto: the student's own dtype
    eval: int = 0  # held-out inputs the stage runs on with teacher and student
    force: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_stage(self.stage)
        if self.examples is None and not self.inputs:
            raise DistillError("give --inputs (for the teacher) or --examples (a file of examples)")
        if self.eval and not self.inputs:
            raise DistillError("--eval needs --inputs to draw held-out inputs from")
        if self.eval < 0 or (self.limit is not None and self.limit < 1):
            raise DistillError("--eval must be >= 0 and --limit >= 1")
        if self.examples is not None and self.extra_examples is not None:
            raise DistillError("--extra-examples adds to the teacher's examples; with --examples there is no "
                               "teacher step (put all rows in one file)")
        if self.inputs == "sharegpt" and self.limit is None:
            raise DistillError("`--inputs sharegpt` needs --limit (ShareGPT holds about 90,000 prompts)")
        if self.epochs <= 0 or self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise DistillError("epochs, lr, batch size and grad accumulation must be positive")

    def fingerprint(self, teacher_backend: Backend | None = None) -> str:
        """What decides the run's examples and student: every setting but where and how fast it runs."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name not in _NOT_FINGERPRINTED}
        values["teacher"] = _teacher_desc(self, teacher_backend)
        return json_hash(values)


def older_distillation(out: Path) -> str | None:
    """"" for a distillation folder made before run folders were marked (it kept no fingerprint), else None."""
    made = (SUMMARY_FILE, EXAMPLES_FILE, CACHE_FILE, "final", "train")
    return "" if any((out / name).exists() for name in made) else None


def distill(settings: DistillSettings, *, teacher_backend: Backend | None = None,
            console: Console | None = None) -> dict[str, Any]:
    """Run a distillation (resuming what an interrupted run finished) and return its summary.

    `teacher_backend` replaces the backend `settings.teacher` describes (e.g. an engine already loaded).
    """
    console = console or Console(stderr=True)
    with RunFolder(settings.out, older=older_distillation, kind="distillation") as folder:
        return _distill(folder, settings, teacher_backend, console)


def _distill(folder: RunFolder, s: DistillSettings, teacher_backend: Backend | None,
             console: Console) -> dict[str, Any]:
    teacher_pv, student_pv = prompt_versions(s.stage, s.teacher_prompt_version, s.student_prompt_version)
    out = folder.root
    fingerprint = s.fingerprint(teacher_backend)
    replacing = folder.check(fingerprint, s.force, "distillation")  # another configuration: refused unless forced
    if (out / "final").exists() and (out / SUMMARY_FILE).exists() and not s.force:
        raise DistillError(f"{out} already holds a finished distillation (final/, {SUMMARY_FILE}); "
                           f"use --force to run it again")
    started = time.perf_counter()
    summary: dict[str, Any] = {"stage": s.stage, "student": s.student, "teacher": _teacher_desc(s, teacher_backend),
                               "teacher_prompt_version": teacher_pv, "student_prompt_version": student_pv}

    train_inputs: list[Any] = []
    heldout: list[Any] = []
    if s.inputs:
        wanted = None if s.limit is None else s.limit + s.eval
        records = load_inputs(s.stage, s.inputs, wanted, s.filter_queries)
        train_inputs, heldout = split_heldout(s.stage, records, s.eval)
        if not train_inputs and s.examples is None:
            raise DistillError(f"all {len(records)} inputs are held out for --eval {s.eval}: nothing is left for "
                               f"the teacher; raise --limit or lower --eval")
    given = read_examples(s.examples, s.stage) if s.examples is not None else None
    extra = read_examples(s.extra_examples, s.stage) if s.extra_examples is not None else None

    # The inputs proved usable: claim the folder (an older configuration's run deleted under `force`, the
    # temporaries of a killed run swept, the fingerprint written), and under `force` redo this configuration's.
    folder.claim(fingerprint, force=s.force, derived=DERIVED, what="distillation",
                 temporaries=[out, out / "train", out / "train" / "checkpoints"])
    if s.force and not replacing:
        folder.clear(DERIVED)  # the teacher's answers stay in its cache
    teacher = _LazyTeacher(s, teacher_backend, out, teacher_pv)
    try:
        if given is not None:
            examples = given
            report = None
            summary["teacher"] = {"kind": "examples file",
                                  "model": ", ".join(sorted({e.teacher_model for e in examples if e.teacher_model}))
                                  or "unknown"}
            summary["examples_file"] = str(s.examples)
            used = {e.input_id for e in examples} | {_key(e.messages) for e in examples}
            student_stage = make_stage(s.stage, teacher_backend or _NoBackend(), student_pv)
            # The designated held-out tail first, then other inputs the examples do not cover.
            heldout = [r for r in (heldout + train_inputs) if input_id(r) not in used
                       and _key(student_stage.conversation(r)) not in used][: s.eval]
        else:
            console.print(f"[bold]teacher[/bold] {summary['teacher']['model']} answers {len(train_inputs)} "
                          f"{s.stage} inputs (prompt {teacher_pv}; student prompt {student_pv})")

            def progress(done: int, total: int, kept: int) -> None:
                console.print(f"  teacher: {done}/{total} answered, {kept} kept")

            examples, report = generate_examples(
                s.stage, train_inputs, teacher.get(), teacher_prompt_version=teacher_pv,
                student_prompt_version=student_pv, batch_size=s.teacher_batch_size, retries=s.retries,
                max_null_share=s.max_null_share, max_tokens=s.teacher_max_tokens, progress=progress)
            _print_rejects(console, report)
            if extra is not None:
                console.print(f"{len(extra)} extra examples from {s.extra_examples}")
                summary["extra_examples"] = len(extra)
                examples += extra
            if not examples:
                raise DistillError(f"the teacher produced no usable examples from {len(train_inputs)} inputs "
                                   f"(rejected: {dict(report.rejected)}); use a stronger teacher, more inputs, "
                                   f"or --examples")
            write_examples(out / EXAMPLES_FILE, examples)
            summary["examples_file"] = str(out / EXAMPLES_FILE)
        summary["teacher_data"] = report.to_dict() if report else None
        summary["examples"] = len(examples)
        summary["null_examples"] = sum(e.is_null for e in examples)

        final, training = _train(s, examples, student_pv, summary, console)
        summary["training"] = training
        summary["final"] = str(final)
        if heldout:
            summary["eval"] = _evaluate(s, heldout, teacher, final, teacher_pv, student_pv, console)
    finally:
        teacher.close()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    from fineinstructions.io.atomic import write_json_atomic

    write_json_atomic(out / SUMMARY_FILE, summary)
    # Only now is the run finished (a rerun before this point resumes from the last checkpoint).
    shutil.rmtree(out / "train" / "checkpoints", ignore_errors=True)
    print_summary(console, summary)
    return summary


def _key(messages: list[dict[str, str]]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


class _NoBackend:
    """A stand-in backend for building a stage's prompts only (it is never asked to generate)."""

    model_id = "none"

    def __init__(self) -> None:
        from fineinstructions.backends.base import BackendStats

        self.stats = BackendStats()

    def generate(self, conversations: Any, sampling: Any) -> list[Any]:
        raise RuntimeError("prompt-building stand-in backend cannot generate")

    def count_tokens(self, texts: Any) -> list[int]:
        return [0 for _ in texts]

    def close(self) -> None:
        pass


class _LazyTeacher:
    """The teacher behind the run's request cache, built only when a call needs it."""

    def __init__(self, settings: DistillSettings, backend: Backend | None, out: Path, prompt_version: str):
        self.settings, self.backend, self.out, self.namespace = settings, backend, out, prompt_version
        self.owned = backend is None
        self._cached: Backend | None = None
        self._cache: Any = None

    def get(self) -> Backend:
        if self._cached is None:
            from fineinstructions.backends.cache import CachedBackend, RequestCache

            if self.backend is None:
                from fineinstructions.backends.factory import create_backend

                self.backend = create_backend(self.settings.teacher)
            self._cache = RequestCache(self.out / CACHE_FILE)
            self._cached = CachedBackend(self.backend, self._cache, f"{self.settings.stage}/{self.namespace}")
        return self._cached

    def close(self) -> None:
        if self.owned and self.backend is not None:
            self.backend.close()
        if self._cache is not None:
            self._cache.close()


def _teacher_desc(s: DistillSettings, backend: Backend | None) -> dict[str, Any]:
    if backend is not None:
        return {"kind": "given", "model": backend.model_id}
    return {"kind": s.teacher.kind, "model": s.teacher.model, "base_url": s.teacher.base_url}


def _print_rejects(console: Console, report: TeacherReport) -> None:
    table = Table(title=f"teacher outputs: {report.kept} kept of {report.inputs} inputs", show_edge=False)
    table.add_column("rejected because")
    table.add_column("rows", justify="right")
    for reason, count in report.rejected.most_common():
        table.add_row(reason, str(count))
    if not report.rejected:
        table.add_row("(none)", "0")
    console.print(table)
    console.print(f"teacher calls: {report.requests} paid, {report.cache_hits} from the cache; "
                  f"{report.completion_tokens} generated tokens in {report.seconds:.1f} s")


# -- training -----------------------------------------------------------------------------------------------


def _train(s: DistillSettings, examples: list[Example], student_pv: str, summary: dict[str, Any],
           console: Console) -> tuple[Path, dict[str, Any]]:
    from fineinstructions.distill.sft import build_sft_data, load_student, save_model_folder, tokenizer_sha
    from fineinstructions.training.loop import (
        CheckpointMismatch,
        TrainingError,
        TrainSettings,
        evaluate_loss,
        resolve_device,
        train_loop,
    )

    student = load_student(s.student, s.chat_template)
    data, sft = build_sft_data(student.tokenizer, examples, s.max_seq_len, s.pack)
    if sft.too_long:
        console.print(f"[yellow]{sft.too_long} of {sft.examples} examples are longer than max_seq_len="
                      f"{s.max_seq_len} tokens and were dropped[/yellow]")
    try:
        device = resolve_device(s.device)
    except TrainingError as err:
        raise DistillError(str(err)) from err
    total_steps = math.ceil(round(s.epochs * len(data)) / (s.batch_size * s.grad_accum))
    if total_steps < 1:
        raise DistillError(f"{s.epochs} epochs of {len(data)} rows is less than one training step")
    # A short run should not be all warmup: at most a fifth of the steps warm up.
    warmup = min(s.warmup_steps, total_steps // 5)
    dtype = "bfloat16" if device.type == "cuda" and _bf16_ok() else "float32"
    settings = TrainSettings(seq_len=data.seq_len, batch_size=s.batch_size, grad_accum=s.grad_accum, lr=s.lr,
                             warmup_steps=warmup, weight_decay=s.weight_decay, epochs=s.epochs,
                             log_every=max(1, total_steps // 50), eval_every=10**9,
                             checkpoint_every=s.checkpoint_every, keep_checkpoints=1, seed=s.seed,
                             device=str(device), dtype=dtype)
    tok_sha = tokenizer_sha(student.tokenizer)
    fingerprint = json_hash([s.stage, student.path, tok_sha, s.pack])
    probe = data.slice(slice(0, min(len(data), 64)))  # the loss on (up to 64 rows of) the training examples
    student.model.to(device)
    loss_before = evaluate_loss(student.model, probe, s.batch_size, device, dtype)
    console.print(f"[bold]student[/bold] {s.student}: {sft.kept} examples in {len(data)} rows of {data.seq_len} "
                  f"tokens, {total_steps} steps on {device} ({dtype}); loss on the examples {loss_before:.3f}")
    try:
        result = train_loop(student.model, data, settings, s.out / "train", fingerprint=fingerprint,
                            console=console)
    except CheckpointMismatch as err:
        raise DistillError(str(err)) from err
    loss_after = evaluate_loss(student.model, probe, s.batch_size, device, dtype)
    logged = _metrics(s.out / "train" / "metrics.jsonl")
    real_share = sft.tokens / max(1, data.num_tokens)  # padding tokens are not data
    training = {
        "examples_kept": sft.kept, "examples_too_long": sft.too_long, "rows": sft.rows, "seq_len": sft.seq_len,
        "tokens": sft.tokens, "completion_tokens": sft.completion_tokens, "steps": result.steps,
        "warmup_steps": warmup, "epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size, "device": str(device),
        "dtype": dtype, "resumed_from": result.resumed_from,
        "train_loss_start": logged[0] if logged else None, "train_loss_end": logged[-1] if logged else None,
        "examples_loss_before": round(loss_before, 4), "examples_loss_after": round(loss_after, 4),
        "tokens_seen": result.tokens_seen, "tokens_per_s": round(result.tokens_per_s, 1),
        "real_tokens_per_s": round(result.tokens_per_s * real_share, 1), "train_seconds": round(result.seconds, 1),
    }
    meta = {
        "trained_on": f"distill:{s.stage}", "prompt_format": "chat", "tokens_seen": result.tokens_seen,
        "config_fingerprint": fingerprint, "tokenizer_sha": tok_sha, "stage": s.stage,
        "stage_prompt_version": _config_version(s.stage, examples, student_pv),
        "teacher": summary["teacher"] | {"prompt_versions": sorted({e.teacher_prompt_version for e in examples
                                                                    if e.teacher_prompt_version})},
        "teacher_models": sorted({e.teacher_model for e in examples if e.teacher_model}),
        "examples": sft.kept, "base_model": student.path, "max_seq_len": s.max_seq_len,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    final = save_model_folder(student.model, student.tokenizer, s.out / "final", meta,
                              student.dtype if s.save_dtype == "auto" else s.save_dtype)
    return final, training


def _bf16_ok() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _metrics(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [round(float(json.loads(line)["loss"]), 4) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def _config_version(stage: str, examples: list[Example], default: str) -> str:
    """The prompt version the student answers, as the pipeline config names it (e.g. query_templatizer)."""
    versions = Counter(e.prompt_version for e in examples if e.prompt_version)
    full = versions.most_common(1)[0][0] if versions else default
    return full.removeprefix(f"{stage}-")


# -- evaluation ---------------------------------------------------------------------------------------------


def evaluate_stage(stage: str, backend: Backend, prompt_version: str, inputs: list[Any]) -> dict[str, Any]:
    """Run the stage (no retries) on `inputs` and count its valid outputs.

    Valid: a template the stage keeps; for instantiate a pair the gates keep, or a null (the template does
    not fit, a valid verdict).
    """
    stage_obj = make_stage(stage, backend, prompt_version)
    if hasattr(stage_obj, "retries"):
        stage_obj.retries = 0
    start = time.perf_counter()
    before = backend.stats.completion_tokens
    result = stage_obj.process(inputs)
    reasons = Counter(r.reason.split(":")[0] for r in result.rejected)
    nulls = reasons.pop("null", 0)
    valid = len(result.records) + nulls
    return {"inputs": len(inputs), "valid": valid, "valid_rate": round(valid / max(1, len(inputs)), 3),
            "outputs": len(result.records), "nulls": nulls, "rejected": dict(reasons.most_common()),
            "completion_tokens": backend.stats.completion_tokens - before,
            "seconds": round(time.perf_counter() - start, 1)}


def student_backend(model_dir: Path, device: str = "auto") -> Backend:
    """The distilled model as a backend: kind "transformers", or the vLLM backend where that is missing."""
    try:
        from fineinstructions.backends.transformers_engine import TransformersBackend
    except ImportError:
        from fineinstructions.backends.vllm_engine import VLLMBackend

        return VLLMBackend(str(model_dir))
    return TransformersBackend(str(model_dir), prompt_format="chat", device=device)


def _evaluate(s: DistillSettings, heldout: list[Any], teacher: _LazyTeacher, final: Path, teacher_pv: str,
              student_pv: str, console: Console) -> dict[str, Any]:
    console.print(f"[bold]eval[/bold]: the {s.stage} stage on {len(heldout)} held-out inputs, teacher vs student")
    teacher_backend = teacher.get()
    teacher_eval = evaluate_stage(s.stage, teacher_backend, teacher_pv, heldout) | {"model": teacher_backend.model_id}
    backend = student_backend(final, s.device)
    try:
        student_eval = evaluate_stage(s.stage, backend, student_pv, heldout) | {"model": str(final)}
    finally:
        backend.close()
    return {"inputs": len(heldout), "teacher": teacher_eval, "student": student_eval}


# -- report -------------------------------------------------------------------------------------------------


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    """A table of what a distillation produced."""
    table = Table(title=f"distill {summary['stage']}: {summary['student']} <- {summary['teacher']['model']}",
                  show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    teacher_data = summary.get("teacher_data")
    if teacher_data:
        rejected = ", ".join(f"{k} {v}" for k, v in teacher_data["rejected"].items()) or "none"
        table.add_row("teacher data", f"{teacher_data['kept']} kept of {teacher_data['inputs']} inputs "
                      f"({teacher_data['nulls']} null); rejected: {rejected}")
        table.add_row("teacher calls", f"{teacher_data['requests']} paid, {teacher_data['cache_hits']} cached")
    else:
        table.add_row("examples", f"{summary['examples']} from {summary.get('examples_file')}")
    t = summary.get("training", {})
    if t:
        table.add_row("training", f"{t['examples_kept']} examples ({t['examples_too_long']} too long), "
                      f"{t['steps']} steps, {t['tokens_seen']:,} tokens on {t['device']}")
        table.add_row("train loss", f"{t['train_loss_start']} -> {t['train_loss_end']} (per logged step); on the "
                      f"examples {t['examples_loss_before']} -> {t['examples_loss_after']}")
        table.add_row("throughput", f"{t['tokens_per_s']:,.0f} tok/s ({t['real_tokens_per_s']:,.0f} without "
                      f"padding), {t['train_seconds']} s")
    evaluation = summary.get("eval")
    if evaluation:
        for who in ("teacher", "student"):
            e = evaluation[who]
            table.add_row(f"eval {who}", f"valid {e['valid']}/{e['inputs']} ({e['valid_rate']:.0%}); "
                          f"rejected: {e['rejected'] or 'none'}")
    table.add_row("model", f"{summary.get('final')} (backend kind transformers or vllm)")
    console.print(table)


def summary_of(out: Path) -> dict[str, Any]:
    """The distill.json of a finished run."""
    return json.loads((Path(out) / SUMMARY_FILE).read_text(encoding="utf-8"))


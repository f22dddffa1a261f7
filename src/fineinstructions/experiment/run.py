"""`fineinstructions experiment`: the paper's comparison in one command, resumable at every step.

    EXP_DIR/experiment.json         every step's status, seconds (summed over the invocations that ran it with the
                                    same settings) and the key of those settings
    EXP_DIR/heldout.jsonl           the held-out questions with reference answers
    EXP_DIR/corpus/documents.jsonl  the documents every arm is made from
    EXP_DIR/runs/<arm>/             each generative arm's pipeline run (FineInstructions or a baseline recipe)
    EXP_DIR/train/                  the token-matched arms and their models, every seed (`fineinstructions train`)
    EXP_DIR/eval/                   answers, judgments and scores (`fineinstructions evaluate`)
    EXP_DIR/results.{json,md,png}   arms x measures with 95% CIs, with what each arm cost

Steps (`--step`): inputs -> generate (a `generate:<arm>` record per generative arm) -> train -> evaluate ->
results. Each step resumes what it finds (the pipeline runs, training and evaluation keep their own progress), so
rerunning the same command after a crash picks up where it stopped; a finished generation run is not reopened. The
inputs are made once: when the corpus or held-out settings change, the experiment is refused (its runs were made
from the old corpus) unless `force`, which starts it over.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from fineinstructions.config import PipelineConfig, validated
from fineinstructions.errors import FineInstructionsError
from fineinstructions.experiment.config import ArmConfig, ExperimentConfig
from fineinstructions.experiment.heldout import corpus_documents, document_rows, load_heldout, write_jsonl
from fineinstructions.experiment.results import write_results
from fineinstructions.hashing import json_hash
from fineinstructions.io.atomic import write_json_atomic
from fineinstructions.io.run_folder import RunFolder

log = logging.getLogger(__name__)

STATE = "experiment.json"
HELDOUT = "heldout.jsonl"
CORPUS = "corpus/documents.jsonl"
INPUTS_KEY = "corpus/inputs.json"
# What an experiment makes besides results (deleted when `force` starts it over for new inputs).
MADE = ("runs", "train", "eval", "corpus", HELDOUT, STATE)
RESULTS = ("results.json", "results.md", "results.png")
STEPS = ("inputs", "generate", "train", "evaluate", "results")


class ExperimentError(FineInstructionsError):
    """An experiment step cannot run (missing inputs, an arm that made nothing)."""


class Experiment:
    """One experiment folder: its config, its paths and the record of its steps."""

    def __init__(self, config: ExperimentConfig, console: Console | None = None, force: bool = False):
        self.config = config
        self.root = Path(config.output_dir).expanduser()
        self.console = console
        self.force = force
        self.state: dict[str, Any] = {}

    # -- paths -------------------------------------------------------------------------------------------

    @property
    def heldout_file(self) -> Path:
        return self.root / HELDOUT

    @property
    def corpus_file(self) -> Path:
        return self.root / CORPUS

    def run_dir(self, arm: ArmConfig) -> Path:
        return self.root / "runs" / arm.name

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def generative_arms(self) -> list[ArmConfig]:
        return [arm for arm in self.config.arms if arm.kind != "documents"]

    # -- running -----------------------------------------------------------------------------------------

    def run(self, only: tuple[str, ...] = ()) -> dict[str, Any]:
        """Run (or resume) every step, or only the steps named in `only` (of STEPS); return the results."""
        unknown = [s for s in only if s not in STEPS]
        if unknown:
            raise ExperimentError(f"unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
        with RunFolder(self.root, kind="experiment") as folder:
            folder.claim(self.config.fingerprint(), config_text=_yaml(self.config.model_dump(mode="json")),
                         force=True, derived=RESULTS, what="experiment", temporaries=[self.root, self.root / "corpus"])
            self.state = self._load_state()
            wanted = set(only or STEPS)
            if "inputs" in wanted:
                self._step("inputs", self.inputs_key(), self._inputs)
            if "generate" in wanted:
                for arm in self.generative_arms():
                    self._step(f"generate:{arm.name}", self.pipeline_config(arm).fingerprint(),
                               functools.partial(self._generate, arm))
            if "train" in wanted:
                self._step("train", self.train_key(), self._train)
            if "evaluate" in wanted:
                self._step("evaluate", json_hash([self.train_key(), self.config.evaluate.model_dump(mode="json")]),
                           self._evaluate)
            results: dict[str, Any] = {}
            if "results" in wanted:
                results = self._step("results", self.config.fingerprint(), self._results)
        return results

    def inputs_key(self) -> str:
        """What decides the corpus and the held-out questions."""
        return json_hash([self.config.corpus.model_dump(mode="json"), self.config.heldout.model_dump(mode="json")])

    def train_key(self) -> str:
        """What decides the trained models: the inputs, every arm's generation settings, the training settings."""
        return json_hash([self.inputs_key(), self.config.pipeline, [a.model_dump(mode="json") for a in
                                                                    self.config.arms],
                          self.config.train.model_dump(mode="json")])

    def _say(self, message: str) -> None:
        if self.console is not None:
            self.console.rule(message)
        log.info(message)

    def _load_state(self) -> dict[str, Any]:
        path = self.root / STATE
        state: dict[str, Any] = {}
        if path.is_file():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                state = {}
        state["fingerprint"] = self.config.fingerprint()
        state.setdefault("steps", {})
        return state

    def _step(self, name: str, key: str, work: Callable[[], Any]) -> Any:
        """Run one step and record its status and seconds; the seconds of a step whose settings (`key`) changed
        start again from zero, so they always add up to what these settings cost."""
        self._say(f"experiment step {name}")
        entry = self.state["steps"].get(name)
        if entry is None or entry.setdefault("key", key) != key:
            entry = self.state["steps"][name] = {"status": "pending", "seconds": 0.0, "invocations": 0, "key": key}
        entry["status"] = "running"
        entry["invocations"] += 1
        started = time.perf_counter()
        try:
            result = work()
        except BaseException:
            entry["status"] = "failed"
            raise
        finally:
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - started, 2)
            write_json_atomic(self.root / STATE, self.state)
        entry["status"] = "done"
        write_json_atomic(self.root / STATE, self.state)
        return result

    # -- steps -------------------------------------------------------------------------------------------

    def _inputs(self) -> None:
        """heldout.jsonl and corpus/documents.jsonl, made once per corpus and held-out settings (see the module
        docstring)."""
        key_file = self.root / INPUTS_KEY
        if self.heldout_file.is_file() and self.corpus_file.is_file():
            stored = json.loads(key_file.read_text(encoding="utf-8")).get("key") if key_file.is_file() else None
            if stored in (None, self.inputs_key()):
                write_json_atomic(key_file, {"key": self.inputs_key()})
                return
            if not self.force:
                raise ExperimentError(f"{self.root} was made from other corpus or held-out settings: every run, model "
                                      "and score there comes from them. Use another output_dir, restore the settings "
                                      "to resume, or --force to start the experiment over")
            RunFolder(self.root).clear([m for m in MADE if m != STATE])
        questions = load_heldout(self.config.heldout)
        documents = corpus_documents(self.config.corpus, [q["instruction"] for q in questions])
        if not documents:
            raise ExperimentError("the corpus holds no documents")
        write_jsonl(self.corpus_file, document_rows(documents))
        write_jsonl(self.heldout_file, questions)
        write_json_atomic(key_file, {"key": self.inputs_key()})
        if self.console is not None:
            self.console.print(f"{len(questions)} held-out questions -> {self.heldout_file}; {len(documents)} "
                               f"documents -> {self.corpus_file}")

    def pipeline_config(self, arm: ArmConfig) -> PipelineConfig:
        """The pipeline config of one generative arm's run."""
        data = self.config.arm_pipeline(arm, str(self.corpus_file.resolve()), str(self.run_dir(arm).resolve()))
        return validated(PipelineConfig, data, f"experiment arm {arm.name!r}")

    def _generate(self, arm: ArmConfig) -> dict[str, Any]:
        from fineinstructions.pipeline import Pipeline

        config = self.pipeline_config(arm)
        summary_file = RunFolder(self.run_dir(arm)).summary_file
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text(encoding="utf-8"))
            if summary.get("config_fingerprint") == config.fingerprint():
                if self.console is not None:
                    self.console.print(f"{arm.name}: finished run in {self.run_dir(arm)}")
                return dict(summary)
        summary = Pipeline(config, console=self.console, show_progress=self.console is not None,
                           force=self.force).run()
        if not RunFolder(self.run_dir(arm)).dataset_files():
            read = (summary.get("inputs") or {}).get("documents", 0)
            raise ExperimentError(f"arm {arm.name!r} kept nothing from {read} documents "
                                  f"(see {self.run_dir(arm)}: `fineinstructions summary` shows why); a larger corpus "
                                  "or another model is needed before it can be trained on")
        return dict(summary)

    def train_config(self) -> Any:
        """The `train` config: every arm, the first being the head-to-head's anchor."""
        from fineinstructions.training.data import ArmSpec
        from fineinstructions.training.run import TrainConfig

        specs = []
        for arm in self.config.arms:
            if arm.kind == "documents":
                specs.append(ArmSpec(arm.name, "documents", (str(self.corpus_file),)))
            else:
                kind = "pairs" if arm.kind == "fineinstructions" else "texts"
                specs.append(ArmSpec(arm.name, kind, (str(self.run_dir(arm)),)))
        t = self.config.train
        return TrainConfig(out=str(self.train_dir), arm_specs=tuple(specs), pair_format=t.pair_format, seeds=t.seeds,
                           model_size=t.model_size, seq_len=t.seq_len, tokens=t.tokens, epochs=t.epochs,
                           batch_size=t.batch_size, grad_accum=t.grad_accum, lr=t.lr, warmup_steps=t.warmup_steps,
                           tokenizer=t.tokenizer, vocab_size=t.vocab_size, heldout_fraction=0.0,
                           eval_fraction=t.eval_fraction, seed=t.seed, device=t.device, dtype=t.dtype,
                           log_every=10, eval_every=100, checkpoint_every=200)

    def _train(self) -> dict[str, Any]:
        from fineinstructions.training.run import run_training, summary_table

        manifest = run_training(self.train_config(), console=self.console, force=self.force)
        if self.console is not None:
            self.console.print(summary_table(manifest))
        return manifest

    def evaluation_settings(self) -> Any:
        from fineinstructions.evaluation.run import EvaluationSettings

        e = self.config.evaluate
        return EvaluationSettings(max_new_tokens=e.max_new_tokens, temperature=0.0, seed=e.seed,
                                  batch_size=e.batch_size, device=e.device, threads=e.threads, judge=e.judge,
                                  judge_max_tokens=e.judge_max_tokens, judge_max_answer_chars=e.max_answer_chars,
                                  judge_batch_size=e.judge_batch_size, judge_mode=e.judge_mode,
                                  bootstrap_resamples=e.bootstrap_resamples)

    def _evaluate(self) -> dict[str, Any]:
        from fineinstructions.evaluation.heldout import load_instructions
        from fineinstructions.evaluation.run import evaluate

        instructions = load_instructions(self.heldout_file, "instruction", "reference", seed=self.config.evaluate.seed)
        return evaluate(self.eval_dir, train_dir=self.train_dir, instructions=instructions,
                        settings=self.evaluation_settings(), console=self.console)

    def _results(self) -> dict[str, Any]:
        for path in (self.train_dir / "manifest.json", self.eval_dir / "scores.json"):
            if not path.is_file():
                raise ExperimentError(f"{path} is missing: run the train and evaluate steps first")
        summaries = {}
        for arm in self.generative_arms():
            summary_file = RunFolder(self.run_dir(arm)).summary_file
            summaries[arm.name] = json.loads(summary_file.read_text(encoding="utf-8")) if summary_file.is_file() \
                else {}
        manifest = json.loads((self.train_dir / "manifest.json").read_text(encoding="utf-8"))
        scores = json.loads((self.eval_dir / "scores.json").read_text(encoding="utf-8"))
        results = write_results(self.root, self.config, self.state, summaries, manifest, scores)
        if self.console is not None:
            self.console.print((self.root / "results.md").read_text(encoding="utf-8"))
        return results


def run_experiment(config: ExperimentConfig, console: Console | None = None, force: bool = False,
                   only: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run (or resume) an experiment; return its results (see `Experiment`)."""
    return Experiment(config, console, force).run(only)


def _yaml(value: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(value, sort_keys=False, allow_unicode=True))

"""A run folder is owned: a run claims only an empty folder or one of its own runs, and holds a lock on it.

`RunFolder` is the one place that knows a folder's layout and how to claim it (pipeline, training,
evaluation and distillation runs alike): refuse a foreign or busy folder, refuse another configuration's
run unless forced (then clear what that run derived), sweep the temporaries a killed run of ours left,
and write the marker and fingerprint.

Layout of a pipeline run:

    .fineinstructions-run  marker          fingerprint, config.yaml   what made the run
    .lock                  the OS lock      summary.json, run.log      its results and log
    work/<stage>/shard-N.parquet, stats/, rejects/        query stages (templatize, ...), one shard each
    work/<stage>/rank-R/shard-N.parquet, stats/, rejects/ document stages (match ... filter), per rank
    work/signatures/rank-R/shard-N.parquet                each kept pair's dedup signature
    work/dedup/edges/, removed.parquet, rejects/          pair dedup across ranks
    work/steps/<step>/task-N.json                          a finished task of a step (written last)
    index/, index.sha      the template index and its key
    dataset/rank-R/part-N.parquet   the kept pairs, in parts of a target size
    cache/requests.sqlite  the driver's model calls; cache/rank-R.sqlite each rank's; logs/rank-R.log

The marker file `.fineinstructions-run` says a folder is a run folder (folders made before the marker are
recognised by their `fingerprint` and `config.yaml`). The lock is an OS file lock on `.lock`, released by
the kernel when the process dies, so a killed run never blocks the next one; the lock file names its
holder for the message a second run gets.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from fineinstructions.errors import ConfigChanged, FineInstructionsError
from fineinstructions.io.atomic import remove_stale_temporaries, write_text_atomic

MARKER = ".fineinstructions-run"
LOCK = ".lock"
_LEGACY = ("fingerprint", "config.yaml")


class RunFolderError(FineInstructionsError):
    """The output folder cannot be used for this run (not a run folder, in use, not writable)."""


def is_run_folder(path: Path) -> bool:
    """Whether `path` is a fineinstructions run folder (by its marker, or the files of older runs)."""
    return (path / MARKER).is_file() or all((path / name).is_file() for name in _LEGACY)


def check_claimable(path: Path, older: Callable[[Path], str | None] | None = None, kind: str = "pipeline") -> None:
    """Refuse a path that is not a folder a run may write into: a file, or a non-empty foreign folder.

    `older` recognises a run of the caller's kind made before the marker existed (see `RunFolder`)."""
    if str(path).strip() in ("", "."):
        raise RunFolderError("give the run an output folder of its own (--out or run.output_dir), not the "
                             "current directory")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output folder {path} is a file")
    held = marker_kind(path) if (path / MARKER).is_file() else None
    if held is not None and held != kind:
        raise RunFolderError(f"{path} holds a {held} run, not a {kind} one: give this {kind} run its own folder")
    # An empty folder may hold the lock file of a run that failed before it claimed the folder.
    if (path.is_dir() and not is_run_folder(path) and not (older and older(path) is not None)
            and any(p.name != LOCK for p in path.iterdir())):
        raise RunFolderError(f"{path} is not empty and is not a fineinstructions run folder: give an empty or new "
                             f"folder (a run deletes and rewrites files in its folder)")


def check_outside_inputs(path: Path, inputs: list[str]) -> None:
    """Refuse an output folder inside a local input folder: its shards would be read back as input."""
    root = path.resolve()
    for source in inputs:
        if not source or source.startswith("hf:") or "://" in source:
            continue
        folder = Path(source).expanduser().resolve()
        if folder.is_dir() and (root == folder or folder in root.parents):
            raise RunFolderError(f"output folder {path} is inside the input folder {source}: the run's own files "
                                 f"would be read as input; put the output elsewhere")


class RunLock:
    """An exclusive, non-blocking OS lock on a run folder, held for the life of the run."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunFolderError naming the process that holds it."""
        path = self.folder / LOCK
        try:
            handle = path.open("a+", encoding="utf-8")
        except OSError as err:
            raise RunFolderError(f"cannot write to the run folder {self.folder}: {err.strerror or err}") from err
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks here
            self._handle = handle
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(f"{self.folder} is in use by {holder}: wait for that run to finish (or stop it); "
                                 f"two runs in one folder would mix their outputs") from err
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None


def write_marker(folder: Path, kind: str = "pipeline") -> None:
    """Mark `folder` as a run folder of `kind` (pipeline, training, evaluation, distillation); idempotent."""
    marker = folder / MARKER
    if not marker.is_file() or marker_kind(folder) != kind:
        marker.write_text(json.dumps({"kind": "fineinstructions run folder", "run": kind, "version": 2}) + "\n",
                          encoding="utf-8")


def marker_kind(folder: Path) -> str | None:
    """The kind of run a marked folder holds (markers written before kinds were recorded: pipeline runs)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("run", "pipeline")) if isinstance(data, dict) else None


# Where a run writes temporaries (relative to its folder); the stale-temporary sweep looks only there.
def temporary_folders(root: Path) -> list[Path]:
    nested = [Path(dirpath) for top in (root / "work", root / "dataset") if top.is_dir()
              for dirpath, _, _ in os.walk(top)]
    return [root, root / "index", root / "cache", root / "logs", *nested]


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}"


def rank_name(rank: int) -> str:
    return f"rank-{rank:05d}"


# A stage's folder (work/<stage>/, or a stage command's --output): per shard its output, stats and rejects.
def shard_output_path(stage_dir: Path, shard: int) -> Path:
    """The shard's output records; written last, it is the shard's completion marker."""
    return stage_dir / f"{shard_name(shard)}.parquet"


def shard_stats_path(stage_dir: Path, shard: int) -> Path:
    return stage_dir / "stats" / f"{shard_name(shard)}.json"


def shard_rejects_path(stage_dir: Path, shard: int) -> Path:
    return stage_dir / "rejects" / f"{shard_name(shard)}.parquet"


class RunFolder:
    """A run's folder: every path in it, the lock, and the claim (fingerprint, refuse or force, sweep).

    Use as a context manager: entering checks the folder may be used, creates it and takes the lock;
    `claim` then binds it to one configuration. A folder this run created is removed again when the run
    fails before claiming it (its inputs did not open), so a bad path leaves nothing behind.

    `older` recognises a folder this kind of run made before run folders were marked (training, evaluation and
    distillation folders had neither marker nor `fingerprint`): it returns that run's fingerprint, "" when it
    recorded none (the folder is adopted by whichever configuration claims it), or None when the folder holds no
    such run (a non-empty one is then refused as foreign).
    """

    def __init__(self, root: str | Path, older: Callable[[Path], str | None] | None = None, kind: str = "pipeline"):
        self.root = Path(root)
        self.kind = kind
        self._lock = RunLock(self.root)
        self._created = False
        self._older = older

    # -- layout -----------------------------------------------------------------------------------
    @property
    def work(self) -> Path:
        return self.root / "work"

    def stage_dir(self, stage: str, rank: int | None = None) -> Path:
        """Where a stage commits its shards (`shard-N.parquet`, `stats/`, `rejects/`); a rank's own folder."""
        return self.work / stage if rank is None else self.work / stage / rank_name(rank)

    def stage_outputs(self, stage: str, kind: str = "shard-*.parquet") -> list[Path]:
        """A stage's committed shard files (`kind`: outputs, or e.g. `stats/shard-*.json`), the driver's and every
        rank's, sorted by path."""
        folder = self.stage_dir(stage)
        return sorted([*folder.glob(kind), *folder.glob(f"rank-*/{kind}")])

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    def dataset_rank(self, rank: int) -> Path:
        return self.dataset / rank_name(rank)

    def dataset_files(self) -> list[Path]:
        """The dataset's Parquet parts, in the order the run produced them."""
        return sorted(self.dataset.glob("rank-*/part-*.parquet")) if self.dataset.is_dir() else []

    def step_marker(self, step: str, task: int) -> Path:
        return self.work / "steps" / step / f"task-{task:05d}.json"

    def signature_file(self, rank: int, shard: int) -> Path:
        return self.work / "signatures" / rank_name(rank) / f"{shard_name(shard)}.parquet"

    def signature_files(self) -> list[Path]:
        return sorted((self.work / "signatures").glob("rank-*/shard-*.parquet"))

    def dedup_edges(self, task: int) -> Path:
        return self.work / "dedup" / "edges" / f"task-{task:05d}.parquet"

    @property
    def dedup_removed(self) -> Path:
        return self.work / "dedup" / "removed.parquet"

    def dedup_rejects(self, rank: int) -> Path:
        return self.work / "dedup" / "rejects" / f"{rank_name(rank)}.parquet"

    def rank_cache(self, rank: int) -> Path:
        return self.root / "cache" / f"{rank_name(rank)}.sqlite"

    def rank_log(self, rank: int, step: str = "generate") -> Path:
        return self.root / "logs" / f"{step}-{rank_name(rank)}.log"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def index_stamp(self) -> Path:
        return self.root / "index.sha"

    @property
    def fingerprint_file(self) -> Path:
        return self.root / "fingerprint"

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def summary_file(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def request_cache(self) -> Path:
        return self.root / "cache" / "requests.sqlite"

    @property
    def log_file(self) -> Path:
        return self.root / "run.log"

    # -- claim ------------------------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close(failed=error is not None)

    def open(self, inputs: Sequence[str] = ()) -> None:
        """Check the folder may be used (and is not inside a local input folder), create it, take the lock."""
        check_claimable(self.root, self._older, self.kind)
        check_outside_inputs(self.root, list(inputs))
        self._created = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(f"cannot create the run folder {self.root}: {err.strerror or err}") from err
        self._lock.acquire()

    def close(self, failed: bool = False) -> None:
        """Release the lock; a folder this run created and never claimed is removed when the run failed."""
        self._lock.release()
        if failed and self._created and not (self.root / MARKER).exists():
            shutil.rmtree(self.root, ignore_errors=True)

    def stored_fingerprint(self) -> str | None:
        """The fingerprint of the run the folder holds (an older run's, by `older`), None when it holds none."""
        marker = self.fingerprint_file
        if marker.is_file():
            return marker.read_text().strip()
        if self._older is not None and self.root.is_dir():
            return self._older(self.root) or None
        return None

    def check(self, fingerprint: str, force: bool = False, what: str = "run",
              describe: Callable[[], str] | None = None) -> bool:
        """Whether the folder holds another configuration's run; refused (ConfigChanged) unless `force`.

        `describe` says what changed, for the message (default: the two fingerprints)."""
        stored = self.stored_fingerprint()
        if stored is None or stored == fingerprint:
            return False
        if not force:
            change = describe() if describe else f"config fingerprint {stored}, this config is {fingerprint}"
            raise ConfigChanged(f"{self.root} holds a {what} with another configuration ({change}): use another "
                                f"output folder, rerun with the original settings to resume, or --force to start over")
        return True

    def claim(self, fingerprint: str, config_text: str | None = None, force: bool = False,
              derived: Sequence[str] = (), what: str = "run", describe: Callable[[], str] | None = None,
              temporaries: Sequence[Path] | None = None) -> bool:
        """Bind the folder to one configuration: check it (see `check`); when forced over another run, delete
        the `derived` paths (relative to the folder); sweep our own stale temporaries; write the marker,
        `config.yaml` (when given) and `fingerprint`. Return whether an older run was cleared."""
        changed = self.check(fingerprint, force, what, describe)
        if changed:
            self.clear(derived)
        removed = remove_stale_temporaries(self.root, list(temporaries) if temporaries is not None
                                           else temporary_folders(self.root))
        if removed:
            logging.getLogger(__name__).info("removed %d temporary files left by a killed run", removed)
        write_marker(self.root, self.kind)
        if config_text is not None:
            write_text_atomic(self.config_file, config_text)
        write_text_atomic(self.fingerprint_file, fingerprint + "\n")
        return changed

    def clear(self, derived: Sequence[str]) -> None:
        """Delete the `derived` paths (relative to the folder): what a run made, for a forced redo."""
        for name in derived:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

"""A run folder is owned: a run claims only an empty folder or one of its own runs, and holds a lock on it.

The marker file `.fineinstructions-run` says a folder is a run folder (folders made before the marker are
recognised by their `fingerprint` and `config.yaml`). The lock is an OS file lock on `.lock`, released by
the kernel when the process dies, so a killed run never blocks the next one; the lock file names its
holder for the message a second run gets.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import IO

MARKER = ".fineinstructions-run"
LOCK = ".lock"
_LEGACY = ("fingerprint", "config.yaml")


class RunFolderError(RuntimeError):
    """The output folder cannot be used for this run (not a run folder, in use, not writable)."""


def is_run_folder(path: Path) -> bool:
    """Whether `path` is a fineinstructions run folder (by its marker, or the files of older runs)."""
    return (path / MARKER).is_file() or all((path / name).is_file() for name in _LEGACY)


def check_claimable(path: Path) -> None:
    """Refuse a path that is not a folder a run may write into: a file, or a non-empty foreign folder."""
    if str(path).strip() in ("", "."):
        raise RunFolderError("give the run an output folder of its own (--out or run.output_dir), not the "
                             "current directory")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"output folder {path} is a file")
    if path.is_dir() and not is_run_folder(path) and any(path.iterdir()):
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


def write_marker(folder: Path) -> None:
    """Mark `folder` as a run folder (idempotent)."""
    marker = folder / MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"kind": "fineinstructions run folder", "version": 1}) + "\n", encoding="utf-8")


# Where a run writes temporaries (relative to its folder); the stale-temporary sweep looks only there.
def temporary_folders(root: Path) -> list[Path]:
    work = root / "work"
    stages = [p for p in work.iterdir() if p.is_dir()] if work.is_dir() else []
    return [root, work, root / "dataset", root / "index", root / "cache",
            *stages, *(s / "rejects" for s in stages), *(s / "stats" for s in stages)]

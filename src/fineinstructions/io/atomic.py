"""Atomic file writes: write to a temporary file (or folder) beside the target, then rename into place."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `path` in one rename, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(directory: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `directory` in one rename, on error it is removed."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory.parent, [directory.parent], name=directory.name)  # orphans of killed runs
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)


# The temporaries this module makes: `.NAME.tmp-PID` (files), `.NAME.tmp-PID-RANDOM` (folders) and, from
# older versions, `.NAME.tmp-RANDOM` (folders, random characters from tempfile).
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<pid>\d+)(?:-[a-z0-9_]+)?|[a-z0-9_]+)$")


def remove_stale_temporaries(root: str | Path, folders: Iterable[Path] | None = None, name: str | None = None) -> int:
    """Delete the temporaries this module made whose process no longer runs (a SIGKILL between writing and
    renaming); return how many. Only directly inside `folders` when given (else anywhere under `root`), only
    names this module makes (and only those for target `name`, when given); those of live processes stay."""
    candidates = (p for folder in folders for p in (Path(folder).iterdir() if Path(folder).is_dir() else ())) \
        if folders is not None else Path(root).rglob(".*.tmp-*")
    removed = 0
    for path in list(candidates):
        match = _TEMPORARY.match(path.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if match["pid"] is not None and _alive(int(match["pid"])):
            continue
        if match["pid"] is None and path.is_file():
            continue  # not one of ours: files always carry their pid
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

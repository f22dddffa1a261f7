"""A folder as input, local or a remote prefix: its input files in path order, and their rows one file after
another (or, with `part`, one rank's share of them).

Hidden, empty and foreign files, special files (a named pipe would block the walk), the `rejects/` and
`stats/` of stage outputs and run folders below the root are not input: each is counted in
`ReadStats.ignored_files` with its reason. A file that cannot be read is skipped and counted. A remote prefix
follows the same rules on its listing (object stores have no special files or symlinks).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from fineinstructions.io.files import file_kind, open_file, open_remote_file
from fineinstructions.io.read_stats import InputError, ReadStats, Share
from fineinstructions.io.remote import RemoteFile, list_entries
from fineinstructions.io.run_folder import _LEGACY, MARKER, is_run_folder

Opener = Callable[[Share | None], Iterator[dict[str, Any]]]  # a file's rows, given the share of it to read


def folder_input_files(root: Path, stats: ReadStats) -> list[Path]:
    """Input files under `root` in path order. Hidden, empty and foreign files are counted as ignored; the
    `rejects/` folders of stage outputs (and `stats/` beside `shard-N.parquet` files) and run folders below
    `root` are not input.

    A folder of text files is a corpus (one document a file); beside data files (.jsonl, .json, .parquet) text
    files are a README and the like, so they are counted as ignored (`text_beside_data`), not read.
    """
    files: list[Path] = []
    seen: set[tuple[int, int]] = set()  # folders already walked: symlink loops end here

    def walk(folder: Path, top: bool) -> None:
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            if top:
                raise InputError(f"cannot read folder {folder}: {err.strerror or err}") from err
            stats.skip("unreadable_folder", f"{folder} ({err.strerror or err})")
            return
        stage_output = any(e.name.startswith("shard-") and e.name.endswith(".parquet") for e in entries)
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            if entry.name.startswith("."):
                stats.ignore("hidden", rel)
                continue
            if _is_dir(entry):
                if entry.name == "rejects":
                    stats.ignore("stage_rejects", rel)  # a stage's dropped rows, not input
                elif is_run_folder(path):
                    stats.ignore("run_folder", rel)  # a run's outputs inside its inputs would feed the run itself
                elif stage_output and entry.name == "stats":
                    stats.ignore("stage_stats", rel)
                else:
                    walk(path, False)
                continue
            if file_kind(path)[0] is None:
                stats.ignore("unsupported_format", rel)
                continue
            try:
                st = entry.stat()
            except OSError as err:  # e.g. a dangling symlink
                stats.skip("unreadable_file", f"{rel} ({err.strerror or err})")
                continue
            if not stat.S_ISREG(st.st_mode):  # a named pipe would block the walk (or lose data): not input
                stats.ignore("special_file", rel)
            elif st.st_size == 0:
                stats.ignore("empty_file", rel)
            else:
                files.append(path)

    walk(root, True)
    if any(file_kind(f)[0] != "text" for f in files):
        for text_file in (f for f in files if file_kind(f)[0] == "text"):
            stats.ignore("text_beside_data", text_file.relative_to(root).as_posix())
        files = [f for f in files if file_kind(f)[0] != "text"]
    return files


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; a loop is caught by the walk
    except OSError:
        return False


def folder_rows(root: Path, files: list[Path], stats: ReadStats, without: Sequence[str] = (),
                columns: Sequence[str] | None = None,
                part: tuple[int, int] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of every file in turn (or rank `part[0]`'s share of them, see `shared_rows`); a file that cannot be
    read is counted (unreadable_file) and skipped.

    `without` names Parquet columns left unread, `columns` the only ones read.
    """
    named: list[tuple[str, Opener]] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        named.append((rel, partial(_open_local, path, rel, stats, without, columns)))
    return shared_rows(named, stats, part)


def _open_local(path: Path, rel: str, stats: ReadStats, without: Sequence[str], columns: Sequence[str] | None,
                share: Share | None) -> Iterator[dict[str, Any]]:
    return open_file(path, rel, stats, without, columns, share)


def remote_folder_rows(files: list[RemoteFile], stats: ReadStats, without: Sequence[str] = (),
                       columns: Sequence[str] | None = None,
                       part: tuple[int, int] | None = None) -> Iterator[dict[str, Any]]:
    """`folder_rows` for the files of a remote prefix (`remote_folder_files`)."""
    named: list[tuple[str, Opener]] = [
        (f.rel, partial(_open_remote, f, stats, without, columns)) for f in files]
    return shared_rows(named, stats, part)


def _open_remote(file: RemoteFile, stats: ReadStats, without: Sequence[str], columns: Sequence[str] | None,
                 share: Share | None) -> Iterator[dict[str, Any]]:
    return open_remote_file(file.url, file.rel, stats, without, columns, share, size=file.size)


def shared_rows(files: Sequence[tuple[str, Opener]], stats: ReadStats,
                part: tuple[int, int] | None) -> Iterator[dict[str, Any]]:
    """The rows of `files` (name, opener) in turn, or with `part` = (rank, ranks) only rank's share of them.

    With at least `ranks` files, file i goes whole to rank i % ranks. With fewer, every rank reads every file's
    share (a `Share` numbering rows and row groups across the files), and a file that cannot be opened is
    counted by rank i % ranks only, so each rank's counts add up to those of the whole read.
    """
    if part is None:
        for rel, opener in files:
            yield from _counted(rel, opener, None, stats, True)
        return
    rank, ranks = part
    if len(files) >= ranks:
        for i, (rel, opener) in enumerate(files):
            if i % ranks == rank:
                yield from _counted(rel, opener, None, stats, True)
        return
    share = Share(rank, ranks)
    for i, (rel, opener) in enumerate(files):
        yield from _counted(rel, opener, share, stats, i % ranks == rank)


def _counted(rel: str, opener: Opener, share: Share | None, stats: ReadStats,
             count: bool) -> Iterator[dict[str, Any]]:
    """The rows `opener` gives; a file that cannot be read is skipped, and counted when `count`."""
    try:
        yield from opener(share)
    except (InputError, OSError) as err:
        if count:
            stats.skip("unreadable_file", str(err) if isinstance(err, InputError) else f"{rel} ({err})")


def remote_folder_files(url: str, stats: ReadStats) -> list[RemoteFile]:
    """The input files below the remote prefix `url`, by the rules of `folder_input_files` applied to its
    listing: hidden, foreign and empty files, `rejects/`, the `stats/` of stage outputs and run folders below
    the prefix are counted as ignored (a folder once); text files beside data files are not input."""
    entries = list_entries(url)
    names: dict[tuple[str, ...], set[str]] = {}  # folder (path components below the prefix) -> its file names
    for entry in entries:
        parts = tuple(entry.rel.split("/"))
        names.setdefault(parts[:-1], set()).add(parts[-1])
    excluded: dict[tuple[str, ...], str | None] = {(): None}  # folder -> why it is not walked (None: walked)

    def why_excluded(folder: tuple[str, ...]) -> str | None:
        if folder not in excluded:
            parent = why_excluded(folder[:-1])
            if parent is not None:
                excluded[folder] = "inside"
            else:
                files = names.get(folder, set())
                parent_files = names.get(folder[:-1], set())
                reason = None
                if folder[-1].startswith("."):
                    reason = "hidden"
                elif folder[-1] == "rejects":
                    reason = "stage_rejects"
                elif MARKER in files or all(n in files for n in _LEGACY):
                    reason = "run_folder"
                elif folder[-1] == "stats" and any(_is_shard(n) for n in parent_files):
                    reason = "stage_stats"
                excluded[folder] = reason
                if reason is not None:
                    stats.ignore(reason, "/".join(folder))
        return excluded[folder]

    files: list[RemoteFile] = []
    for entry in entries:
        parts = tuple(entry.rel.split("/"))
        if any(why_excluded(parts[:i]) is not None for i in range(1, len(parts))):
            continue
        if parts[-1].startswith("."):
            stats.ignore("hidden", entry.rel)
        elif file_kind(PurePosixPath(entry.rel))[0] is None:
            stats.ignore("unsupported_format", entry.rel)
        elif entry.size == 0:
            stats.ignore("empty_file", entry.rel)
        else:
            files.append(entry)
    kinds = [file_kind(PurePosixPath(f.rel))[0] for f in files]
    if any(kind != "text" for kind in kinds):
        for file, kind in zip(files, kinds, strict=True):
            if kind == "text":
                stats.ignore("text_beside_data", file.rel)
        files = [f for f, kind in zip(files, kinds, strict=True) if kind != "text"]
    return files


def _is_shard(name: str) -> bool:
    return name.startswith("shard-") and name.endswith(".parquet")

"""A folder as input: its input files in path order, and their rows one file after another.

Hidden, empty and foreign files, special files (a named pipe would block the walk), the `rejects/` and
`stats/` of stage outputs and run folders below the root are not input: each is counted in
`ReadStats.ignored_files` with its reason. A file that cannot be read is skipped and counted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fineinstructions.io.files import file_kind, open_file
from fineinstructions.io.read_stats import InputError, ReadStats
from fineinstructions.io.run_folder import is_run_folder


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


def folder_rows(root: Path, files: list[Path], stats: ReadStats,
                without: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """Rows of every file in turn; a file that cannot be read is counted (unreadable_file) and skipped.

    `without` names Parquet columns left unread.
    """
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            yield from open_file(path, rel, stats, without)
        except (InputError, OSError) as err:
            stats.skip("unreadable_file", str(err) if isinstance(err, InputError) else f"{rel} ({err})")

"""Hugging Face datasets (`hf:NAME`): name checks and streaming by Hub name (online) or local folder (offline)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fineinstructions.io.read_stats import InputError, ReadStats, Share

_HF_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def hf_name_error(name: str, check_path: bool = True) -> str | None:
    """Why `name` (after `hf:`) cannot name a Hugging Face dataset, or None.

    A name is `owner/name` (or `name`) on the Hub, or a local folder path (with `check_path`, it must exist).
    """
    if not name.strip():
        return "hf: needs a dataset name, e.g. hf:HuggingFaceFW/fineweb or hf:/path/to/dataset_folder"
    path_like = name.startswith(("/", ".", "~")) or name.count("/") >= 2
    if not path_like and _HF_NAME.fullmatch(name):
        return None
    if path_like and not check_path:
        return None
    if path_like and Path(name).expanduser().exists():
        return None
    if path_like:
        return f"no local Hugging Face dataset folder {name} (hf:NAME takes a Hub name owner/name or a folder)"
    return f"{name!r} is not a Hugging Face dataset name (owner/name: letters, digits, '-', '_', '.')"


def read_hub_dataset(name: str, split: str, config: str | None, stats: ReadStats, revision: str | None = None,
                     data_files: str | list[str] | dict[str, Any] | None = None,
                     share: Share | None = None) -> Iterator[dict[str, Any]]:
    """Stream a Hugging Face dataset by hub name (online) or local path (offline).

    A local folder has no revisions: `revision` applies to Hub names only and is ignored for a folder. With
    `share`, the whole stream is read and only this rank's rows (numbered in stream order) are kept.
    """
    error = hf_name_error(name)
    if error:
        raise InputError(error)
    import datasets

    local = Path(name).expanduser().exists()
    options: dict[str, Any] = {"streaming": True}
    if revision is not None and not local:
        options["revision"] = revision
    if data_files is not None:
        options["data_files"] = data_files
    pinned = f" at revision {revision}" if "revision" in options else ""
    try:
        dataset = datasets.load_dataset(name, config, split=split, **options)
    except Exception as err:  # datasets raises many types (missing, offline, bad config)
        raise InputError(f"cannot load Hugging Face dataset {name!r}{pinned} (split {split!r}): {err}") from err
    return _hf_rows(dataset, name, stats, share)


def _hf_rows(dataset: Iterable[dict[str, Any]], name: str, stats: ReadStats,
             share: Share | None = None) -> Iterator[dict[str, Any]]:
    read = 0
    try:
        for row in dataset:
            if share is not None and not share.owns_row():
                continue
            read += 1
            stats.rows += 1
            yield dict(row)
    except Exception as err:  # a remote shard that breaks mid-stream: a clear error, not a library trace
        raise InputError(f"reading Hugging Face dataset {name!r} failed after {read} rows: {err}") from err

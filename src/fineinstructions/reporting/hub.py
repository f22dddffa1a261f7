"""Publish a run's dataset: stage the parquet parts and the card, then upload them to the Hugging Face Hub."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fineinstructions.io.atomic import atomic_dir
from fineinstructions.io.run_folder import RunFolder
from fineinstructions.reporting.card import DATA_FILES, check_card_target, render_card
from fineinstructions.reporting.run import ReportError, RunView, load_run

STAGED_ENTRIES = {"README.md", "data"}


def stage_dataset(run_dir: str | Path, target: str | Path, repo_id: str | None = None, license: str | None = None,
                  allow_unfinished: bool = False, overwrite: bool = False) -> Path:
    """Write exactly the folder `push` uploads: `README.md` (the card) and `data/rank-R-part-N.parquet`.

    The folder is replaced atomically; an existing folder that holds anything else, or a README.md this tool
    did not write (unless `overwrite`), is refused.
    """
    view = _finished_view(run_dir, allow_unfinished)
    target = Path(target)
    if target.exists() and (not target.is_dir() or {p.name for p in target.iterdir()} - STAGED_ENTRIES):
        raise ReportError(f"{target} exists and holds more than a staged dataset; give an empty or new folder")
    if target.is_dir():
        check_card_target(target / "README.md", overwrite)
    with atomic_dir(target) as tmp:
        (tmp / "data").mkdir()
        for part in view.parts:
            _link_or_copy(part, tmp / "data" / f"{part.parent.name}-{part.name}")  # rank-R-part-N.parquet
        (tmp / "README.md").write_text(render_card(view, repo_id, license, data_files=DATA_FILES), encoding="utf-8")
    return target


def push_to_hub(run_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                license: str | None = None, allow_unfinished: bool = False, api: Any = None) -> str:
    """Create the dataset repository if needed and upload the staged folder in one commit; return its URL.

    The token comes from `token`, else HF_TOKEN, else the cached `huggingface-cli login`. Parquet parts the
    repository holds from an earlier push are replaced, so a smaller run leaves no stale parts behind.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token or os.environ.get("HF_TOKEN"))
    with tempfile.TemporaryDirectory(prefix="fineinstructions-push-") as tmp:
        folder = stage_dataset(run_dir, Path(tmp) / "upload", repo_id, license, allow_unfinished)
        # `private` only applies when the repository is created; None keeps the account's default visibility
        url = api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=True if private else None)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="dataset",
                          commit_message=f"Upload FineInstructions dataset (config {_fingerprint(run_dir)})",
                          delete_patterns=["data/*.parquet"])
    return str(url)


def _finished_view(run_dir: str | Path, allow_unfinished: bool) -> RunView:
    view = load_run(run_dir)
    if not view.finished and not allow_unfinished:
        raise ReportError(f"{run_dir} has not finished (no summary.json for its config): finish or resume it "
                          "first, or pass --allow-unfinished to publish the shards committed so far")
    return view


def _fingerprint(run_dir: str | Path) -> str:
    return RunFolder(run_dir).fingerprint_file.read_text().strip()


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link (parts are never modified in place: a rewrite renames a new file over them), else copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)

"""Reports of a run: an HTML page with plots, a Hugging Face dataset card, and publishing to the Hub."""

from __future__ import annotations

from pathlib import Path

from fineinstructions.io.atomic import write_text_atomic
from fineinstructions.reporting.card import check_card_target, render_card
from fineinstructions.reporting.html import render_html
from fineinstructions.reporting.hub import push_to_hub, stage_dataset
from fineinstructions.reporting.run import ReportError, RunView, load_run

__all__ = ["ReportError", "RunView", "load_run", "push_to_hub", "render_card", "render_html", "stage_dataset",
           "write_report"]


def write_report(run_dir: str | Path, out: str | Path | None = None, license: str | None = None,
                 repo_id: str | None = None, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `report.html` and the dataset card `README.md` into `out` (default RUN_DIR/report); return both.

    A README.md there that this tool did not write is refused (ReportError, nothing written) unless `overwrite`.
    """
    view = load_run(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "report"
    html_path, card_path = out / "report.html", out / "README.md"
    check_card_target(card_path, overwrite)
    write_text_atomic(html_path, render_html(view))
    write_text_atomic(card_path, render_card(view, repo_id, license))
    return html_path, card_path

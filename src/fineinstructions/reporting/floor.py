"""Choosing the similarity floor (`match.min_score`): how often a matched candidate ends as a null, and how
often as a kept pair, by its match score.

Every candidate of a finished shard counts once, by its score (the match shards, `work/match/rank-R/`); a
null is a candidate the instantiating model declined (`reason == "null"` in `work/instantiate/rank-R/rejects/`);
a kept pair is a row of the dataset (of the filter shards while the run is unfinished). Only shards the
filter has committed count, so the three agree on the same documents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fineinstructions.io.run_folder import RunFolder, shard_rejects_path

DEFAULT_BINS = 20
DEFAULT_MAX_KEPT_LOSS = 0.1  # the proposal may lose at most this share of the kept pairs


@dataclass
class ScoreBins:
    """Counts by match-score bin: bin i holds scores in [edges[i], edges[i + 1]) (the last bin is closed)."""

    edges: list[float]
    candidates: list[int]
    nulls: list[int]
    kept: list[int]

    @property
    def null_rate(self) -> list[float | None]:
        """Nulls / candidates per bin (None for an empty bin)."""
        return [n / c if c else None for n, c in zip(self.nulls, self.candidates, strict=True)]

    @property
    def kept_rate(self) -> list[float | None]:
        """Kept pairs / candidates per bin (None for an empty bin)."""
        return [k / c if c else None for k, c in zip(self.kept, self.candidates, strict=True)]


@dataclass
class FloorProposal:
    """A floor and what it would have removed from the run: candidates, nulls and kept pairs below it."""

    floor: float
    candidates_removed: int
    candidates: int
    nulls_removed: int
    nulls: int
    kept_lost: int
    kept: int

    def describe(self) -> str:
        """One sentence for the report."""
        return (f"min_score {self.floor:.4g} would have removed {self.nulls_removed} of {self.nulls} nulls "
                f"({_share(self.nulls_removed, self.nulls)}) and {self.kept_lost} of {self.kept} kept pairs "
                f"({_share(self.kept_lost, self.kept)}), with {self.candidates_removed} of {self.candidates} "
                f"candidates ({_share(self.candidates_removed, self.candidates)}).")


def score_bins(candidates: Sequence[float], nulls: Sequence[float], kept: Sequence[float],
               bins: int = DEFAULT_BINS) -> ScoreBins:
    """Bin the three score lists on equal bins spanning the candidates' scores, about `bins` of them: the width
    is the smallest 1, 2 or 5 x 10^k at least span / bins, and edges are multiples of it (so each edge is a
    round floor to propose). Nulls and kept pairs outside the span fall into the end bins."""
    if not candidates:
        return ScoreBins([], [], [], [])
    low, high = min(candidates), max(candidates)
    raw = max((high - low) / bins, 1e-6)
    scale = 10.0 ** math.floor(math.log10(raw))
    width = next(step * scale for step in (1, 2, 5, 10) if step * scale >= raw * (1 - 1e-9))
    lo = math.floor(low / width + 1e-9) * width
    count_bins = max(1, math.ceil((high - lo) / width - 1e-9))
    edges = np.round(lo + width * np.arange(count_bins + 1), 10)
    hi = float(edges[-1])

    def count(values: Sequence[float]) -> list[int]:
        clipped = np.clip(np.asarray(values, dtype=np.float64), lo, hi)
        return [int(n) for n in np.histogram(clipped, bins=edges)[0]]

    return ScoreBins(edges.tolist(), count(candidates), count(nulls), count(kept))


def propose_floor(bins: ScoreBins, max_kept_loss: float = DEFAULT_MAX_KEPT_LOSS) -> FloorProposal | None:
    """The floor (a bin's lower edge) that removes the most nulls while losing at most `max_kept_loss` of the
    kept pairs; of floors that remove as many nulls, the lowest. None when the run kept no pair or no such
    floor removes a null."""
    total_kept, total_nulls, total = sum(bins.kept), sum(bins.nulls), sum(bins.candidates)
    if not total_kept or not total_nulls:
        return None
    best: FloorProposal | None = None
    removed = nulls = lost = 0
    for i in range(1, len(bins.candidates)):  # floor = edges[i] drops bins 0 .. i-1
        removed += bins.candidates[i - 1]
        nulls += bins.nulls[i - 1]
        lost += bins.kept[i - 1]
        if lost > max_kept_loss * total_kept:
            break  # both grow with the floor: no higher floor qualifies
        if nulls > (best.nulls_removed if best else 0):
            best = FloorProposal(bins.edges[i], removed, total, nulls, total_nulls, lost, total_kept)
    return best


def read_score_bins(folder: RunFolder, kept_files: Sequence[Path], bins: int = DEFAULT_BINS) -> ScoreBins:
    """Score bins of a run folder: candidates and nulls of every shard the filter committed, kept pairs from
    `kept_files` (the dataset parts, or the filter shards of an unfinished run)."""
    match_dir, instantiate_dir, filter_dir = (folder.stage_dir(s) for s in ("match", "instantiate", "filter"))
    candidates: list[float] = []
    nulls: list[float] = []
    for done in folder.stage_outputs("filter"):
        relative = done.relative_to(filter_dir)
        candidates += _column(match_dir / relative, "score")
        shard = int(relative.stem.split("-")[1])
        rejects = shard_rejects_path(instantiate_dir / relative.parent, shard)
        nulls += _column(rejects, "score", only_reason="null")
    kept = [score for path in kept_files for score in _column(path, "match_score")]
    return score_bins(candidates, nulls, kept, bins)


def _column(path: Path, column: str, only_reason: str | None = None) -> list[float]:
    """A float column of a Parquet file (rows with `reason == only_reason` when given); [] when the file or the
    column is missing."""
    if not path.is_file():
        return []
    names = pq.read_schema(path).names
    if column not in names or (only_reason is not None and "reason" not in names):
        return []
    table = pq.read_table(path, columns=[column] + (["reason"] if only_reason is not None else []))
    values = table.column(column).to_pylist()
    if only_reason is not None:
        values = [v for v, r in zip(values, table.column("reason").to_pylist(), strict=True) if r == only_reason]
    return [float(v) for v in values if v is not None]


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"

"""How a read reports bad input: `InputError` for an input that cannot be read at all, `ReadStats` for the
rows it read, the rows it skipped (by reason) and the files of a folder it did not take as input; `Share`, which
rows of an input one rank of several reads when `read_rows` is given `part`.

Every reading module shares these; `fineinstructions.io.readers` is where callers import them from.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from fineinstructions.errors import FineInstructionsError

log = logging.getLogger("fineinstructions.io.readers")  # every part of a read logs under the front door's name

LOGGED_PER_REASON = 5  # skips logged at WARNING per reason; the rest at DEBUG (the counts stay exact)


class InputError(FineInstructionsError, ValueError):
    """An input that cannot be read at all (missing, unreadable, empty, unknown format, corrupt)."""


@dataclass
class ReadStats:
    """What a read produced: rows read, rows skipped by reason, and folder files that were not input."""

    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    ignored_files: Counter[str] = field(default_factory=Counter)
    keep_positions: bool = False  # also list (row position, reason) of each skipped row (rows held in memory)
    skipped_at: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, reason: str, where: str, count: int = 1, position: int | None = None) -> None:
        """Count `count` rows lost for `reason`; log the first few of each reason at WARNING. `position` is the
        row's place in its input, kept with `keep_positions`."""
        if self.keep_positions and position is not None:
            self.skipped_at.append((position, reason))
        before = self.skipped[reason]
        self.skipped[reason] += count
        if before < LOGGED_PER_REASON:
            log.warning("skipped %s: %s%s", where, reason, f" ({count} rows)" if count != 1 else "")
            if before + 1 == LOGGED_PER_REASON:
                log.warning("further %s skips are logged at DEBUG level (all are counted)", reason)
        else:
            log.debug("skipped %s: %s", where, reason)

    def ignore(self, reason: str, where: str) -> None:
        """Count a file of a folder that is not input (hidden, zero bytes, another format)."""
        self.ignored_files[reason] += 1
        log.info("ignored %s: %s", where, reason)


@dataclass
class Share:
    """Rank `rank` of `ranks` reading its share of an input that all ranks read (see `read_rows`'s `part`).

    Rows and Parquet row groups are numbered in reading order, each sequence on its own and across every file
    the ranks share; this rank reads those numbered i with i % ranks == rank. A plain JSON Lines file is split
    by byte ranges instead (`byte_range`). Every rank calls `owns_row` / `owns_group` for every row or row
    group, in the same order, so the numbering is the same on every rank.
    """

    rank: int
    ranks: int
    rows_seen: int = 0
    groups_seen: int = 0

    def owns_row(self) -> bool:
        """Number the next row (malformed ones included); True when it is this rank's."""
        self.rows_seen += 1
        return (self.rows_seen - 1) % self.ranks == self.rank

    def owns_group(self) -> bool:
        """Number the next Parquet row group; True when it is this rank's."""
        self.groups_seen += 1
        return (self.groups_seen - 1) % self.ranks == self.rank

    def byte_range(self, size: int) -> tuple[int, int]:
        """[start, end): this rank reads the lines of a `size`-byte file that start in this range."""
        return self.rank * size // self.ranks, (self.rank + 1) * size // self.ranks

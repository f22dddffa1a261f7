"""The run report: one self-contained HTML page, its plots embedded as base64 PNG (no network assets)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # Figure without pyplot: the Agg canvas, no GUI backend, no global state
from matplotlib.ticker import MaxNLocator

from fineinstructions.reporting.floor import DEFAULT_MAX_KEPT_LOSS, propose_floor
from fineinstructions.reporting.run import RunView

KEPT, DROPPED, LIGHT = "#2f6f4f", "#b5523b", "#c9d6cf"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.3em .6em;vertical-align:top}
th{background:#f4f6f5;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:.7em 1em;border-radius:4px;margin:1em 0}.unfinished{background:#fff1d6;border:1px solid #e0b458}
.finished{background:#e6f2ea;border:1px solid #8fbf9f}pre{background:#f6f6f6;padding:.8em;overflow-x:auto}
.pair td{max-width:420px;white-space:pre-wrap;word-break:break-word}img{max-width:100%}code{background:#f3f3f3}
"""


def render_html(view: RunView, sample_size: int = 5) -> str:
    """The report page of a run."""
    q = view.quality
    sections = [
        _header(view),
        _section("quality", "Quality", _quality_table(q)),
        _section("funnel", "Funnel", _png(_funnel_plot(view)) + _funnel_table(view)),
        _section("judge-scores", "Judge scores", _png(_judge_plot(view)) + _p(
            f"Pass rate (score &ge; {_min_score(view)}): {_pct(q.get('judge_pass_rate'))} of judged pairs.")),
        _section("coverage", "Excerpt coverage", _png(_coverage_plot(view)) + _p(
            f"Share of each answer quoted from its document by excerpt reference; kept answers with coverage "
            f"&ge; 0.8: {_pct(q.get('kept_with_coverage_at_least_0_8'))}.")),
        _section("match-floor", "Similarity floor", _png(_floor_plot(view)) + _floor_text(view)),
        _section("templates", "Template usage", _png(_template_plot(view)) + _template_table(view)),
        _section("throughput", "Throughput", _png(_throughput_plot(view)) + _throughput_table(view)),
        _section("samples", "Random kept pairs", _samples(view, sample_size)),
        _section("config", "Configuration", _config(view)),
    ]
    title = f"FineInstructions run report: {view.root.name}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{escape(title)}</h1>\n" + "\n".join(sections)
            + "\n</body></html>\n")


# -- sections ----------------------------------------------------------------------------------------------


def _header(view: RunView) -> str:
    q = view.quality
    if view.finished:
        assert view.summary is not None
        status = (f"<div class=\"banner finished\">Finished run: {q['pairs']} pairs kept from "
                  f"{q['documents_with_pairs']} documents in {view.summary.get('elapsed_s', '?')} s.</div>")
    else:
        done = ", ".join(f"{name} {n}" for name, n in view.shards.items()) or "none"
        status = ("<div class=\"banner unfinished\"><strong>This run has not finished</strong> (no summary.json "
                  "for its config): every figure below covers only the shards committed so far "
                  f"(committed shards per stage: {escape(done)}).</div>")
    ids, prompts = view.model_ids(), view.prompt_versions()
    models = _table(["stage", "model", "model id on the rows", "prompt"],
                    [[stage, model, ids.get(stage, "-"), prompts.get(stage, "-")]
                     for stage, model in view.models().items()])
    return (f"{status}<table><tr><th>run folder</th><td><code>{escape(str(view.root))}</code></td></tr>"
            f"<tr><th>config fingerprint</th><td><code>{escape(view.fingerprint)}</code></td></tr></table>{models}")


def _quality_table(q: dict[str, Any]) -> str:
    hist = q.get("judge_score_histogram", {})
    rows = [
        ("valid-template rate", _pct(q.get("valid_template_rate"))),
        ("mean match similarity", _num(q.get("mean_match_score"), 3)),
        ("instantiated (not null, gates passed)", _pct(q.get("instantiated_rate"))),
        ("mean excerpt coverage, instantiated", _pct(q.get("mean_excerpt_coverage_instantiated"))),
        ("mean excerpt coverage, kept", _pct(q.get("mean_excerpt_coverage_kept"))),
        ("kept answers with coverage &ge; 0.8", _pct(q.get("kept_with_coverage_at_least_0_8"))),
        ("kept answers with unresolved markers", str(q.get("kept_with_unresolved_markers", "-"))),
        ("answer characters per generated token", _num(q.get("answer_chars_per_generated_token"), 2)),
        ("judge pass rate", _pct(q.get("judge_pass_rate"))),
        ("judge scores 1/2/3/4/5 (unparsed)", " / ".join(str(hist.get(k, 0)) for k in "12345")
         + f" ({hist.get('unparsed', 0)})"),
        ("pairs kept", str(q.get("pairs", 0))),
        ("documents with pairs", str(q.get("documents_with_pairs", 0))),
        ("distinct templates used", str(q.get("distinct_templates", 0))),
        ("largest share of one template", _pct(q.get("max_template_share"))),
        ("distinct instructions", _pct(q.get("distinct_instruction_rate"))),
        ("duplicate pairs removed", str(q.get("duplicate_pairs_removed", 0))),
        ("synthetic / document tokens", f"{q.get('synthetic_tokens', 0)} / {q.get('document_tokens', 0)}"),
    ]
    return _table(["figure", "value"], [[label, value] for label, value in rows], numeric=(1,), raw=True)


def _funnel_table(view: RunView) -> str:
    rows = []
    for name, s in view.stages.items():
        dropped = ", ".join(f"{reason}: {n}" for reason, n in s.dropped.most_common()) or "-"
        rows.append([name, s.rows_in, s.rows_out, dropped, view.shards.get(name, 0), f"{s.seconds:.1f}"])
        if name == "template_dedup" and view.index:
            removed = view.index.get("duplicates_removed", 0)
            rows.append(["index", s.rows_out, view.index.get("templates", "?"),
                         f"duplicate_template: {removed}" if removed else "-", "", ""])
    return _table(["stage", "in", "out", "dropped (reason: count)", "shards", "seconds"], rows, numeric=(1, 2, 4, 5))


def _floor_text(view: RunView) -> str:
    bins = view.score_bins
    floor = _configured_floor(view)
    if bins is None or not sum(bins.candidates):
        return _p("No shard has passed the filter yet, so no candidate can be followed to its outcome.")
    intro = _p(f"Each matched candidate by its similarity score (the configured floor, <code>match.min_score</code>, "
               f"is {floor:g}): the share the instantiating model answered <code>null</code> (the template does "
               f"not fit) and the share that became a kept pair, over {sum(bins.candidates)} candidates.")
    proposal, loss = propose_floor(bins), f"{100 * DEFAULT_MAX_KEPT_LOSS:g} %"
    if proposal is None:
        advice = _p(f"No floor removes a null while losing at most {loss} of the kept pairs "
                    f"({sum(bins.nulls)} nulls, {sum(bins.kept)} kept pairs).")
    else:
        advice = _p(f"<strong>Proposed floor</strong> (most nulls removed for at most {loss} of the kept pairs "
                    f"lost): {escape(proposal.describe())}")
    rows = [[f"{lo:.3f} - {hi:.3f}", c, _pct(n), _pct(k)]
            for lo, hi, c, n, k in zip(bins.edges[:-1], bins.edges[1:], bins.candidates, bins.null_rate,
                                       bins.kept_rate, strict=True) if c]
    return intro + advice + _table(["match score", "candidates", "null rate", "kept rate"], rows, numeric=(1, 2, 3))


def _template_table(view: RunView, top: int = 10) -> str:
    uses = view.template_uses()
    if not uses:
        return _p("No pairs were kept, so no template is used.")
    total = sum(n for _, n in uses)
    text = {p.template_id: p.template for p in view.pairs}
    rows = [[tid, text.get(tid, ""), n, f"{100 * n / total:.1f} %"] for tid, n in uses[:top]]
    return (_p(f"{len(uses)} templates over {total} kept pairs; the most used template holds "
               f"{_pct(view.quality.get('max_template_share'))} of them.")
            + _table(["template_id", "template", "pairs", "share"], rows, numeric=(2, 3)))


def _throughput_table(view: RunView) -> str:
    rows = []
    for name, s in view.stages.items():
        rows.append([name, f"{s.rows_in / s.seconds:.2f}" if s.seconds else "-",
                     f"{s.completion_tokens_per_s:.1f}" if s.completion_tokens else "-",
                     s.requests, s.failed_requests, s.prompt_tokens, s.completion_tokens])
    return _table(["stage", "rows/s", "generated tok/s", "requests", "failed", "prompt tokens", "generated tokens"],
                  rows, numeric=(1, 2, 3, 4, 5, 6))


def _samples(view: RunView, k: int) -> str:
    pairs = view.sample_pairs(k)
    if not pairs:
        return _p("No pairs were kept.")
    blocks = []
    for p in pairs:
        answer = p.answer if len(p.answer) <= 2000 else p.answer[:2000] + " [...]"
        rows = [["document", p.document_id], ["template", p.template], ["instruction", p.instantiated_instruction],
                ["answer", answer], ["judge", f"{p.judge_score} ({p.judge_feedback})"],
                ["excerpt coverage", f"{p.excerpt_coverage:.2f} ({p.excerpt_count} excerpts)"]]
        blocks.append("<table class=\"pair\">" + "".join(
            f"<tr><th>{escape(label)}</th><td>{escape(str(value))}</td></tr>" for label, value in rows) + "</table>")
    return _p(f"{len(pairs)} of {len(view.pairs)} kept pairs, drawn with the run's seed.") + "".join(blocks)


def _config(view: RunView) -> str:
    return (_p(f"Fingerprint <code>{escape(view.fingerprint)}</code> (a hash of every setting that changes the "
               "output; it is stored on every row).") + f"<pre>{escape(view.config_text)}</pre>")


# -- plots -------------------------------------------------------------------------------------------------


def _funnel_plot(view: RunView) -> Figure:
    fig, ax = _figure(max(2.0, 0.45 * len(view.stages) + 1))
    names = list(view.stages)[::-1]
    rows_in = [view.stages[n].rows_in for n in names]
    rows_out = [view.stages[n].rows_out for n in names]
    if not names:
        return _empty(fig, ax, "no stage has committed a shard yet")
    y = np.arange(len(names))
    ax.barh(y, rows_in, color=LIGHT, label="rows in")
    ax.barh(y, rows_out, height=0.5, color=KEPT, label="rows out")
    for i, (a, b) in enumerate(zip(rows_in, rows_out, strict=True)):
        ax.text(max(a, b), i, f"  {b} / {a}", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlim(0, max(max(rows_in), max(rows_out), 1) * 1.2)
    ax.set_xlabel("rows")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _judge_plot(view: RunView) -> Figure:
    fig, ax = _figure()
    hist = view.quality.get("judge_score_histogram", {})
    labels = ["1", "2", "3", "4", "5", "unparsed"]
    counts = [hist.get(k, 0) for k in labels]
    passing = _min_score(view)
    colors = [KEPT if k.isdigit() and int(k) >= passing else DROPPED for k in labels]
    ax.bar(labels, counts, color=colors)
    ax.set_xlabel(f"judge score (kept from {passing})")
    ax.set_ylabel("pairs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not any(counts):
        ax.text(0.5, 0.5, "no pair judged yet", transform=ax.transAxes, ha="center", color="gray")
    return fig


def _coverage_plot(view: RunView) -> Figure:
    fig, ax = _figure()
    bins = np.linspace(0, 1, 21)
    kept = [p.excerpt_coverage for p in view.pairs]
    for values, label, color in ((view.instantiated_coverage, "instantiated", LIGHT), (kept, "kept", KEPT)):
        if values:
            ax.hist(np.clip(values, 0, 1), bins=bins, color=color, label=f"{label} ({len(values)})",
                    alpha=0.9 if label == "kept" else 1.0)
    threshold = (view.config.get("instantiate") or {}).get("min_coverage", 0.8)
    ax.axvline(threshold, color=DROPPED, linestyle="--", linewidth=1, label=f"gate {threshold}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("excerpt coverage of the answer")
    ax.set_ylabel("pairs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", fontsize=8)
    if not view.instantiated_coverage and not kept:
        ax.text(0.5, 0.5, "no instantiated pair yet", transform=ax.transAxes, ha="center", color="gray")
    return fig


def _floor_plot(view: RunView) -> Figure:
    fig, ax = _figure()
    bins = view.score_bins
    if bins is None or not sum(bins.candidates):
        return _empty(fig, ax, "no candidate has reached the filter yet")
    edges = np.asarray(bins.edges)
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    counts = ax.twinx()
    counts.bar(centres, bins.candidates, width=width * 0.9, color=LIGHT, label="candidates")
    counts.set_ylabel("candidates")
    counts.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_zorder(counts.get_zorder() + 1)  # the rates over the bars
    ax.patch.set_visible(False)
    for rates, label, color in ((bins.null_rate, "null rate", DROPPED), (bins.kept_rate, "kept rate", KEPT)):
        values = np.array([np.nan if r is None else r for r in rates])
        ax.plot(centres, values, marker="o", markersize=3, color=color, label=label)
    proposal = propose_floor(bins)
    if proposal is not None:
        ax.axvline(proposal.floor, color=DROPPED, linestyle=":", linewidth=1.2, label=f"proposed {proposal.floor:.4g}")
    floor = _configured_floor(view)
    if edges[0] <= floor <= edges[-1]:
        ax.axvline(floor, color="gray", linestyle="--", linewidth=1, label=f"min_score {floor:g}")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("match score (similarity of template and document)")
    ax.set_ylabel("share of the bin's candidates")
    ax.legend(loc="best", fontsize=8)
    return fig


def _template_plot(view: RunView) -> Figure:
    fig, ax = _figure()
    uses = [n for _, n in view.template_uses()]
    if not uses:
        return _empty(fig, ax, "no kept pairs")
    ranks = np.arange(1, len(uses) + 1)
    if len(uses) <= 60:
        ax.bar(ranks, uses, color=KEPT)
    else:  # too many bars to draw one by one
        ax.fill_between(ranks, uses, step="mid", color=KEPT)
        ax.set_xscale("log")
    share = view.quality.get("max_template_share")
    ax.set_title(f"largest share of one template: {_pct(share)}", fontsize=9)
    ax.set_xlabel("templates, most used first")
    ax.set_ylabel("kept pairs")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(uses) <= 60:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _throughput_plot(view: RunView) -> Figure:
    fig = Figure(figsize=(9, max(2.0, 0.45 * len(view.stages) + 1)), layout="constrained")
    left, right = fig.subplots(1, 2)
    names = list(view.stages)[::-1]
    if not names:
        return _empty(fig, left, "no stage has committed a shard yet")
    y = np.arange(len(names))
    rows_per_s = [view.stages[n].rows_in / view.stages[n].seconds if view.stages[n].seconds else 0.0 for n in names]
    tokens_per_s = [view.stages[n].completion_tokens_per_s for n in names]
    for ax, values, label in ((left, rows_per_s, "rows in / s"), (right, tokens_per_s, "generated tokens / s")):
        ax.barh(y, values, color=KEPT)
        ax.set_yticks(y, names)
        ax.set_xlabel(label)
        ax.margins(x=0.2)
        for i, v in enumerate(values):
            if v:
                ax.text(v, i, f" {_rate(v)}", va="center", fontsize=8)
    if any(rows_per_s) and max(rows_per_s) > 100 * min(v for v in rows_per_s if v):
        left.set_xscale("log")
    right.set_yticklabels([])
    return fig


def _figure(height: float = 3.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7, height), layout="constrained")
    return fig, fig.subplots()


def _empty(fig: Figure, ax: Any, message: str) -> Figure:
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", color="gray")
    return fig


# -- HTML helpers ------------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<p><img alt=\"plot\" src=\"data:image/png;base64,{data}\"></p>"


def _section(anchor: str, title: str, body: str) -> str:
    return f"<section id=\"{anchor}\"><h2>{escape(title)}</h2>\n{body}\n</section>"


def _p(text: str) -> str:
    return f"<p>{text}</p>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = (),
           raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (for cells this module wrote itself)."""
    cell: Callable[[Any], str] = (lambda v: str(v)) if raw else (lambda v: escape(str(v)))
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{cell(v)}</td>" if i in numeric else f"<td>{cell(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _configured_floor(view: RunView) -> float:
    return float((view.config.get("match") or {}).get("min_score", 0.0))


def _min_score(view: RunView) -> int:
    return int((view.config.get("judge") or {}).get("min_score", 4))

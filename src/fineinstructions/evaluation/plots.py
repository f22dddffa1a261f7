"""evaluation.png: training curves of both arms, the head-to-head win rate, and the reference scores."""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fineinstructions.io.atomic import atomic_path

log = logging.getLogger(__name__)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a training metrics.jsonl (unreadable lines skipped; [] when the file is absent)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _interval_bars(ax: Any, labels: Sequence[str], stats: Sequence[Mapping[str, Any] | None], colors: Sequence[Any],
                   offset: float = 0.0, width: float = 0.6, hatch: str | None = None) -> None:
    xs, heights, low, high = [], [], [], []
    for i, stat in enumerate(stats):
        value = (stat or {}).get("mean")
        if value is None:
            continue
        xs.append(i + offset)
        heights.append(value)
        low.append(value - (stat or {}).get("ci_low", value))
        high.append((stat or {}).get("ci_high", value) - value)
    if xs:
        ax.bar(xs, heights, width=width, yerr=[low, high], capsize=4, hatch=hatch,
               color=[colors[round(x - offset)] for x in xs])
    ax.set_xticks(range(len(labels)), labels)


def _no_data(ax: Any, title: str, why: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, textwrap.fill(why, 60), ha="center", va="center", transform=ax.transAxes, color="grey",
            fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def write_evaluation_plot(path: Path, scores: Mapping[str, Any], curves: Mapping[str, list[dict[str, Any]]]) -> Path:
    """Draw the four panels (a panel without data says so) and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m["name"] for m in scores["models"]]
    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colors: list[Any] = [palette(i % palette.N) for i in range(max(2, len(names)))]
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    (curve_ax, win_ax), (rouge_ax, ll_ax) = axes

    if any(curves.values()):
        for color, (arm, rows) in zip(colors, curves.items(), strict=False):
            points = [(r["tokens"], r["loss"]) for r in rows
                      if r.get("tokens") is not None and r.get("loss") is not None]
            evals = [(r["tokens"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
            if points:
                curve_ax.plot(*zip(*points, strict=True), color=color, label=f"{arm} train loss")
            if evals:
                curve_ax.plot(*zip(*evals, strict=True), color=color, linestyle="--", marker="o",
                              label=f"{arm} eval loss")
        curve_ax.set_xlabel("training tokens")
        curve_ax.set_ylabel("loss")
        curve_ax.set_title("training curves")
        curve_ax.legend()
    else:
        _no_data(curve_ax, "training curves", "no metrics.jsonl (models given with --model)")

    judged = [(label, scores.get(key) or {}) for key, label in
              (("pairwise", "head-to-head\n(both orders)"), ("single", "single-answer\nrating 1-10"))]
    judged = [(label, result) for label, result in judged if (result.get("win_rate") or {}).get("mean") is not None]
    if judged and len(names) >= 2:
        for x, (_, result) in enumerate(judged):
            win = result["win_rate"]
            win_ax.bar([x], [win["mean"]], width=0.5, color=colors[0],
                       yerr=[[win["mean"] - win["ci_low"]], [win["ci_high"] - win["mean"]]], capsize=6)
            outcomes = result.get("instruction_outcomes", {})
            win_ax.text(x, 0.03, f"{outcomes.get('wins', 0)}W/{outcomes.get('ties', 0)}T/{outcomes.get('losses', 0)}L",
                        ha="center", fontsize=8, color="white")
        win_ax.set_xticks(range(len(judged)), [label for label, _ in judged])
        win_ax.axhline(0.5, color="grey", linestyle=":")
        win_ax.set_ylim(0, 1)
        win_ax.set_ylabel(f"win rate of {names[0]} over {names[1]} (ties = 0.5), 95% CI")
        win_ax.set_title(f"judged by {judged[0][1].get('judge', 'judge')} (instructions: wins/ties/losses)", fontsize=9)
    else:
        errors = [(scores.get(k) or {}).get("error") for k in ("pairwise", "single")]
        _no_data(win_ax, "judged comparison", next((e for e in errors if e), "no judge run"))

    reference = scores.get("reference") or {}
    per_model = reference.get("per_model") or {}
    if per_model:
        for k, metric in enumerate(("rouge_l", "token_f1")):
            _interval_bars(rouge_ax, names, [per_model.get(n, {}).get(metric) for n in names],
                           colors, offset=(k - 0.5) * 0.38, width=0.36, hatch="//" if k else None)
        rouge_ax.set_ylim(0, 1)
        rouge_ax.set_title("ROUGE-L F1 (plain) and token F1 (hatched) vs references, 95% CI", fontsize=10)
    else:
        _no_data(rouge_ax, "reference scores", "no reference answers")

    metric = "logprob_per_token" if reference.get("tokenizers_match", True) else "logprob_per_char"
    if per_model and any(per_model.get(n, {}).get(metric, {}).get("mean") is not None for n in names):
        for i, name in enumerate(names):  # points, not bars: a log-prob has no natural zero to grow from
            stat = per_model.get(name, {}).get(metric) or {}
            if stat.get("mean") is not None:
                ll_ax.errorbar([i], [stat["mean"]], yerr=[[stat["mean"] - stat["ci_low"]],
                                                          [stat["ci_high"] - stat["mean"]]],
                               fmt="o", capsize=6, color=colors[i], markersize=8)
                ll_ax.annotate(f"{stat['mean']:.3f}", (i, stat["mean"]), textcoords="offset points", xytext=(12, 0))
        ll_ax.set_xticks(range(len(names)), names)
        ll_ax.set_xlim(-0.5, len(names) - 0.5)
        ll_ax.set_title(f"reference answer log-likelihood ({metric.replace('_', ' ')}), 95% CI", fontsize=10)
        ll_ax.set_ylabel("mean log-prob (higher is better)")
    else:
        _no_data(ll_ax, "reference log-likelihood", "no reference answers")

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

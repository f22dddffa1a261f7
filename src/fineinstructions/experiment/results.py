"""An experiment's results: arms x measures with 95% CIs, and what each arm cost to make and train.

    results.json  every figure below, by arm
    results.md    two tables: the measures, and the cost (generation seconds per kept item, tokens, training)
    results.png   one panel per measure, a bar per arm with its interval
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fineinstructions.evaluation.arms import MEASURES, arm_measures, model_arm
from fineinstructions.experiment.config import ExperimentConfig
from fineinstructions.io.atomic import atomic_path, write_json_atomic, write_text_atomic


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def arm_costs(config: ExperimentConfig, state: dict[str, Any], summaries: dict[str, dict[str, Any]],
              manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per arm: what generation kept and what it took (seconds of the experiment's step, summed over invocations),
    and the training's token counts, steps, seconds per step and losses averaged over the arm's seeds."""
    costs: dict[str, dict[str, Any]] = {}
    models = manifest.get("models") or {}
    for arm in config.arms:
        counts = (manifest.get("arms") or {}).get(arm.name) or {}
        step = (state.get("steps") or {}).get(f"generate:{arm.name}") or {}
        seconds = step.get("seconds") if arm.kind != "documents" else None
        kept = counts.get("examples")
        results = [m["result"] for m in models.values() if m.get("arm") == arm.name and m.get("result")]
        steps = sum(r.get("steps", 0) for r in results)
        train_seconds = sum(r.get("seconds", 0.0) for r in results)
        summary = summaries.get(arm.name) or {}
        costs[arm.name] = {
            "kind": arm.kind,
            "kept_items": kept,
            "documents": counts.get("documents"),
            "generation_seconds": seconds,
            "seconds_per_kept_item": seconds / kept if seconds is not None and kept else None,
            "generation_elapsed_last_run": summary.get("elapsed_s"),
            "tokens_available": counts.get("tokens_available"),
            "train_tokens_per_epoch": counts.get("train_tokens"),
            "train_loss_tokens_per_epoch": counts.get("train_loss_tokens"),
            "models": len(results),
            "steps_per_model": steps // len(results) if results else None,
            "train_seconds": round(train_seconds, 1),
            "seconds_per_step": train_seconds / steps if steps else None,
            "tokens_per_s": _mean([r["tokens_per_s"] for r in results if r.get("tokens_per_s")]),
            "final_loss": _mean([r["final_loss"] for r in results if r.get("final_loss") is not None]),
            "eval_loss": _mean([r["eval_loss"] for r in results if r.get("eval_loss") is not None]),
        }
    return costs


def build_results(config: ExperimentConfig, state: dict[str, Any], summaries: dict[str, dict[str, Any]],
                  manifest: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """results.json's content."""
    names = [m["name"] for m in scores.get("models") or []]
    measures = arm_measures(scores)
    costs = arm_costs(config, state, summaries, manifest)
    judged = next((scores.get(k) for k in ("reference_graded", "pairwise", "single") if scores.get(k)), None) or {}
    return {
        "anchor": model_arm(names[0]).arm if names else None,
        "judge": judged.get("judge"),
        "questions": (scores.get("instructions") or {}).get("items"),
        "seeds": manifest.get("seeds"),
        "model_preset": manifest.get("model_preset"),
        "parameters": manifest.get("parameters"),
        "token_budget": manifest.get("token_budget"),
        "arms": {arm: {"measures": measures.get(arm, {}), "cost": costs.get(arm, {})} for arm in costs},
        "steps": {name: {"seconds": step.get("seconds"), "status": step.get("status")}
                  for name, step in (state.get("steps") or {}).items()},
        "warnings": scores.get("warnings") or [],
    }


def _ci(stat: dict[str, Any] | None, digits: int) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.{digits}f} [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_markdown(results: dict[str, Any]) -> str:
    """results.md: the measures table and the cost table."""
    anchor = results["anchor"]
    lines = [f"Measures on {results['questions']} held-out questions, each arm pooled over its "
             f"{len(results['seeds'] or [])} seed(s); 95% bootstrap CIs over questions; judge: {results['judge']}. "
             f"Win rates are {anchor}'s against the arm (0.5 = even).", "",
             "| arm | " + " | ".join(label for _, label in MEASURES) + " |",
             "| --- |" + " --- |" * len(MEASURES)]
    for arm, entry in results["arms"].items():
        figures = entry["measures"]
        cells = [_ci(figures.get(key), 2 if "grade" in key or "rating" in key else 3) for key, _ in MEASURES]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    budget = results.get("token_budget") or {}
    lines += ["", f"Cost. Every arm trains on {_num(budget.get('tokens_per_epoch'), ',')} tokens per epoch "
                  f"({_num(budget.get('epochs'), 'g')} epochs, {_num(budget.get('tokens_total'), ',')} tokens) with a "
                  f"{results['model_preset']} model ({_num((results.get('parameters') or 0) / 1e6, '.1f')}M "
                  "parameters). Generation seconds are the experiment step's wall time on this machine.", "",
              "| arm | kept pairs / texts | source documents | generation s | s / kept item | tokens available | "
              "seconds / step | train tok/s | final loss | eval loss |",
              "| --- |" + " ---: |" * 9]
    for arm, entry in results["arms"].items():
        c = entry["cost"]
        lines.append(f"| {arm} | {_num(c['kept_items'], ',')} | {_num(c['documents'], ',')} | "
                     f"{_num(c['generation_seconds'], ',.0f')} | {_num(c['seconds_per_kept_item'], '.2f')} | "
                     f"{_num(c['tokens_available'], ',')} | {_num(c['seconds_per_step'], '.3f')} | "
                     f"{_num(c['tokens_per_s'], ',.0f')} | {_num(c['final_loss'], '.3f')} | "
                     f"{_num(c['eval_loss'], '.3f')} |")
    steps = results.get("steps") or {}
    lines += ["", "Steps (seconds): " + ", ".join(f"{name} {_num(step['seconds'], ',.0f')}"
                                                  for name, step in steps.items())]
    for warning in results.get("warnings") or []:
        lines.append(f"\nWarning: {warning}")
    return "\n".join(lines) + "\n"


def write_results_plot(path: Path, results: dict[str, Any]) -> Path:
    """results.png: one panel per measure an evaluation produced, a bar per arm with its 95% CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results["arms"])
    shown = [(key, label) for key, label in MEASURES
             if any((results["arms"][a]["measures"].get(key) or {}).get("mean") is not None for a in arms)]
    panels = max(1, len(shown))
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2), squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, (key, label) in zip(axes[0], shown, strict=False):
        for i, arm in enumerate(arms):
            stat = results["arms"][arm]["measures"].get(key) or {}
            if stat.get("mean") is None:
                continue
            ax.bar([i], [stat["mean"]], color=palette(i % 10),
                   yerr=[[stat["mean"] - stat["ci_low"]], [stat["ci_high"] - stat["mean"]]], capsize=5)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=8)
        ax.set_title(label, fontsize=9)
        if "win_rate" in key:
            ax.axhline(0.5, color="grey", linestyle=":")
            ax.set_ylim(0, 1)
        elif "grade" in key or "rating" in key:
            ax.set_ylim(0, 10)
        else:
            ax.set_ylim(0, 1)
    if not shown:
        axes[0][0].text(0.5, 0.5, "no judged measures", ha="center", va="center")
    fig.suptitle(f"token for token: {', '.join(arms)} (95% CI; win rates: {results['anchor']} vs the arm)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_results(root: Path, config: ExperimentConfig, state: dict[str, Any], summaries: dict[str, dict[str, Any]],
                  manifest: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    """Write results.json, results.md and results.png into `root`; return the results."""
    results = build_results(config, state, summaries, manifest, scores)
    write_json_atomic(root / "results.json", results)
    write_text_atomic(root / "results.md", results_markdown(results))
    write_results_plot(root / "results.png", results)
    return results

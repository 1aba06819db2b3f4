"""Summary of an autointerp run: mean scores, the shuffled baseline, a score histogram."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saekit.fileio import atomic_write_text, save_figure

METRICS = ("balanced_accuracy", "f1", "precision", "recall", "auc")
NO_AUC = (
    "AUC is absent: the LLM client returned no token probabilities (e.g. `transformers "
    "serve`); hf:MODEL clients and servers that honour `logprobs` give it"
)


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def summarize(results: Sequence[dict], scorers: Sequence[str]) -> dict[str, Any]:
    """Mean of each metric per scorer, for the real explanations and the shuffled ones."""
    scored = [r for r in results if r.get("scores")]
    out: dict[str, Any] = {
        "features": len(results),
        "explained_and_scored": len(scored),
        "skipped": len(results) - len(scored),
        "scores": {}, "shuffled": {}, "failed_answers": {},
    }  # fmt: skip
    any_auc = False
    for scorer in scorers:
        for key in ("scores", "shuffled"):
            per = [r[key][scorer] for r in scored if scorer in (r.get(key) or {})]
            row = {m: _mean([p[m] for p in per if p.get(m) is not None]) for m in METRICS}
            row["n_features"] = len(per)
            out[key][scorer] = row
            any_auc |= row["auc"] is not None
        answers = [r["scores"][scorer] for r in scored if scorer in r["scores"]]
        out["failed_answers"][scorer] = {
            "failed": sum(a["n_failed"] for a in answers),
            "retried": sum(a.get("n_retried", 0) for a in answers),
            "total": sum(a["n"] for a in answers),
        }
    if not any_auc:
        out["auc_note"] = NO_AUC
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """A small text table: real vs shuffled per scorer."""
    lines = [
        f"{summary['explained_and_scored']} of {summary['features']} features explained and "
        f"scored ({summary['skipped']} skipped)",
        f"{'scorer':<10} {'':<9} " + " ".join(f"{m:>17}" for m in METRICS),
    ]

    def cell(v: float | None) -> str:
        return f"{'n/a' if v is None else f'{v:.3f}':>17}"

    for scorer, row in summary["scores"].items():
        base = summary["shuffled"].get(scorer, {})
        lines.append(f"{scorer:<10} {'real':<9} " + " ".join(cell(row[m]) for m in METRICS))
        lines.append(f"{'':<10} {'shuffled':<9} " + " ".join(cell(base.get(m)) for m in METRICS))
        failed = summary["failed_answers"][scorer]
        lines.append(
            f"{'':<10} unparsable answers: {failed['failed']} of {failed['total']} "
            f"({failed.get('retried', 0)} asked once more)"
        )
    if "auc_note" in summary:
        lines.append(summary["auc_note"])
    run = summary.get("run") or {}
    if run.get("features_per_minute") is not None:
        lines.append(
            f"{run['features_this_call']} features in {run['seconds_this_call']} s "
            f"({run['features_per_minute']} features/minute; {run.get('llm_calls', '?')} LLM "
            f"calls, {run.get('cache_hits', 0)} answers from the cache)"
        )
    return "\n".join(lines)


def write_summary(
    out: str | Path, summary: dict[str, Any], results: Sequence[dict], scorers: Sequence[str]
) -> None:
    """``summary.json`` and ``scores.png`` (balanced accuracy: real vs shuffled)."""
    out = Path(out)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scorers), figsize=(4.5 * len(scorers), 3.4), squeeze=False)
    bins = [i / 20 for i in range(21)]
    for ax, scorer in zip(axes[0], scorers, strict=True):
        for key, colour in (("scores", "tab:blue"), ("shuffled", "tab:gray")):
            vals = [r[key][scorer]["balanced_accuracy"] for r in results
                    if scorer in (r.get(key) or {})]  # fmt: skip
            mean = statistics.fmean(vals) if vals else float("nan")
            label = f"{'real' if key == 'scores' else 'shuffled'} (mean {mean:.2f})"
            ax.hist(vals, bins=bins, alpha=0.6, color=colour, label=label)
        ax.axvline(0.5, color="k", lw=0.8, ls=":")
        ax.set(title=scorer, xlabel="balanced accuracy", ylabel="features", xlim=(0, 1))
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "scores.png", dpi=110)

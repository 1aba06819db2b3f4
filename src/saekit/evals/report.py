"""Side-by-side reports of suite results: a text table and the plots researchers expect."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saekit.fileio import save_figure

BASELINE = "residual (baseline)"


def _get(report: Mapping[str, Any], *path: str) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _probe_keys(reports: Mapping[str, Mapping[str, Any]]) -> list[int]:
    for report in reports.values():
        ks = _get(report, "sparse_probing", "eval_config", "k_values")
        if ks:
            return list(ks)
    return []


def comparison_rows(reports: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(label, one value per SAE, then the residual baseline) for every reported metric."""
    names = list(reports)
    rows: list[tuple[str, list[Any]]] = []

    def add(label: str, *path: str, baseline: tuple[str, ...] | None = None) -> None:
        values = [_get(reports[n], *path) for n in names]
        base = _get(reports[names[0]], *baseline) if baseline else None
        if any(v is not None for v in values) or base is not None:
            rows.append((label, values + [base]))

    add("L0", "core", "saekit", "l0")
    add("explained variance", "core", "saekit", "explained_variance")
    add("CE loss recovered", "core", "saekit", "ce_loss_recovered")
    add("KL(clean || spliced)", "core", "saekit", "kl_div")
    add("KL div score", "core", "saekit", "kl_div_score")
    add("dead features", "core", "saekit", "dead_fraction")
    sae, llm = (
        ("sparse_probing", "eval_result_metrics", "sae"),
        ("sparse_probing", "eval_result_metrics", "llm"),
    )
    add("probe acc., all features", *sae, "sae_test_accuracy", baseline=(*llm, "llm_test_accuracy"))
    for k in _probe_keys(reports):
        add(f"probe acc., top {k}", *sae, f"sae_top_{k}_test_accuracy",
            baseline=(*llm, f"llm_top_{k}_test_accuracy"))  # fmt: skip
    mean = ("absorption_first_letter", "eval_result_metrics", "mean")
    add("absorption fraction", *mean, "mean_absorption_fraction_score")
    add("full absorption rate", *mean, "mean_full_absorption_score")
    add("split features per letter", *mean, "mean_num_split_features")
    values = [_get(reports[n], "absorption_first_letter", "letters_qualifying") for n in names]
    if any(v is not None for v in values):
        rows.append(
            (
                "letters with probe F1 > 0.6",
                [None if v is None else len(v) for v in values] + [None],
            )
        )
    for part in ("core", "sparse_probing", "absorption_first_letter"):
        add(f"time: {part} (s)", "timings_s", part)
    return rows


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_comparison(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """A table with one column per SAE and a last column for the residual-stream baselines."""
    headers = ["metric", *reports, BASELINE]
    table = [headers] + [
        [label] + [_show(v) for v in values] for label, values in comparison_rows(reports)
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for r, row in enumerate(table):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if r == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _log_x(ax, ticks: list[int] | None = None) -> None:
    """A log x axis labelled with plain numbers."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _colors(names) -> dict[str, Any]:
    """One colour per SAE, the same in every plot."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "viridis"]
    n = max(1, len(names) - 1)
    return {name: cmap(i if len(names) <= 10 else i / n) for i, name in enumerate(names)}


def _plot_frontier(reports, key: str, label: str, colors) -> Any:
    """L0 against `key`, one point per SAE (+- one standard error), SAEs of one
    architecture joined in L0 order."""
    import matplotlib.pyplot as plt

    points = []
    for name, r in reports.items():
        x, y = _get(r, "core", "saekit", "l0"), _get(r, "core", "saekit", key)
        if x is not None and y is not None and math.isfinite(y):
            se = _get(r, "core", "saekit", f"{key}_se")
            points.append(
                (name, x, y, se if isinstance(se, float) else None, r.get("architecture"))
            )
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arch in dict.fromkeys(p[4] for p in points):
        line = sorted((p for p in points if p[4] == arch), key=lambda p: p[1])
        if len(line) > 1:
            ax.plot([p[1] for p in line], [p[2] for p in line], color="0.6", lw=1, zorder=1,
                    label=arch)  # fmt: skip
    for name, x, y, se, _ in points:
        ax.errorbar(x, y, yerr=se, fmt="o", color=colors[name], capsize=3, zorder=2)
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    _log_x(ax, sorted({round(p[1]) for p in points}))
    ax.set(xlabel="L0 (active features per token)", ylabel=label,
           title=f"sparsity vs {label} (better: up and left)")  # fmt: skip
    if any(p[3] for p in points):
        ax.text(0.99, 0.01, "bars: +- 1 bootstrap SE", transform=ax.transAxes, ha="right",
                va="bottom", fontsize=7, color="0.4")  # fmt: skip
    if any(len([p for p in points if p[4] == a]) > 1 for a in {p[4] for p in points} if a):
        ax.legend(fontsize=7, title="architecture", title_fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return fig


def _plot_probing(reports, ks: list[int], colors) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    sae_path = ("sparse_probing", "eval_result_metrics", "sae")
    llm_path = ("sparse_probing", "eval_result_metrics", "llm")
    for name, r in reports.items():
        accs = [_get(r, *sae_path, f"sae_top_{k}_test_accuracy") for k in ks]
        if any(a is not None for a in accs):
            ax.plot(ks, accs, marker="o", color=colors[name], label=name)
    first = next(r for r in reports.values() if _get(r, *llm_path))
    base = [_get(first, *llm_path, f"llm_top_{k}_test_accuracy") for k in ks]
    ax.plot(ks, base, "k--", marker="s", label="residual, top-k dims")
    full = _get(first, *llm_path, "llm_test_accuracy")
    if full is not None:
        ax.axhline(full, color="gray", linestyle=":", label=f"residual, all dims ({full:.3f})")
    _log_x(ax, ks)
    ax.set(xlabel="k (features in the probe)", ylabel="test accuracy (mean over classes)",
           title="sparse probing: top-k features by mean difference")  # fmt: skip
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig


def _plot_absorption(letters_by_sae, colors) -> Any:
    """Two panels per letter: mean absorption fraction and full absorption rate; letters
    whose ground-truth probe does not qualify are shaded (they do not enter the scores)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    shown = {n: d for n, d in letters_by_sae.items() if d}
    first = next(iter(shown.values()))
    width = 0.8 / len(shown)
    for ax, key, label in ((axes[0], "mean_absorption_fraction", "mean absorption fraction"),
                           (axes[1], "full_absorption_rate", "full absorption rate")):  # fmt: skip
        for j, d in enumerate(first):
            if not d["qualifies"]:
                ax.axvspan(j - 0.5, j + 0.5, color="0.88", zorder=0, lw=0)
        for i, (name, details) in enumerate(shown.items()):
            xs = [j - 0.4 + (i + 0.5) * width for j in range(len(details))]
            ys = [d[key] or 0.0 for d in details]
            ax.bar(xs, ys, width=width, color=colors[name], label=name, zorder=2)
        ax.set_ylabel(label)
        ax.set_xlim(-0.5, len(first) - 0.5)
        ax.grid(axis="y", alpha=0.3)
    ticks = [f"{d['first_letter']}\n{d['f1_probe']:.2f}" for d in first]
    axes[1].set_xticks(range(len(first)), ticks, fontsize=8)
    axes[1].set_xlabel("first letter, and its ground-truth probe's F1 on the test words")
    n_ok = sum(d["qualifies"] for d in first)
    axes[0].set_title(f"feature absorption per first letter ({n_ok} of {len(first)} letters "
                      "qualify: ground-truth probe F1 > 0.6)")  # fmt: skip
    handles, labels = axes[0].get_legend_handles_labels()
    handles.append(Patch(color="0.88", label="letter does not qualify"))
    axes[0].legend(handles=handles, fontsize=7, ncol=min(6, len(handles)), loc="upper right")
    fig.tight_layout()
    return fig


def plot_comparison(reports: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """PNGs: L0 vs CE loss recovered and vs explained variance, probe accuracy vs k,
    absorption per letter. Only plots with data are written."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = _colors(list(reports))
    figures = [
        ("frontier_l0_ce_loss_recovered.png",
         _plot_frontier(reports, "ce_loss_recovered", "CE loss recovered", colors)),
        ("frontier_l0_explained_variance.png",
         _plot_frontier(reports, "explained_variance", "explained variance", colors)),
    ]  # fmt: skip
    ks = _probe_keys(reports)
    if ks:
        figures.append(("probing_accuracy_vs_k.png", _plot_probing(reports, ks, colors)))
    letters = {n: _get(r, "absorption_first_letter", "eval_result_details")
               for n, r in reports.items()}  # fmt: skip
    if any(letters.values()):
        figures.append(("absorption_per_letter.png", _plot_absorption(letters, colors)))
    return [save_figure(fig, out_dir / name) for name, fig in figures if fig is not None]

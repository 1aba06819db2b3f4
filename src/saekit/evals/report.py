"""Side-by-side reports of suite results: a text table and the plots researchers expect."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saekit.fileio import atomic_write

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


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path


def _log_x(ax, ticks: list[int] | None = None) -> None:
    """A log x axis labelled with plain numbers."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_comparison(reports: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> list[Path]:
    """PNGs: L0 vs CE loss recovered and vs explained variance, probe accuracy vs k,
    absorption per letter. Only plots with data are written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, label, filename in (
        ("ce_loss_recovered", "CE loss recovered", "frontier_l0_ce_loss_recovered.png"),
        ("explained_variance", "explained variance", "frontier_l0_explained_variance.png"),
    ):
        points = [
            (n, _get(r, "core", "saekit", "l0"), _get(r, "core", "saekit", key))
            for n, r in reports.items()
        ]
        points = [p for p in points if p[1] is not None and p[2] is not None]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, x, y in points:
            ax.scatter(x, y)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        _log_x(ax, sorted({round(x) for _, x, _ in points}))
        ax.set(xlabel="L0 (active features per token)", ylabel=label, title=f"sparsity vs {label}")
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / filename))
    ks = _probe_keys(reports)
    if ks:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for name, r in reports.items():
            accs = [
                _get(
                    r, "sparse_probing", "eval_result_metrics", "sae", f"sae_top_{k}_test_accuracy"
                )
                for k in ks
            ]
            ax.plot(ks, accs, marker="o", label=name)
        first = next(iter(reports.values()))
        base = [
            _get(
                first, "sparse_probing", "eval_result_metrics", "llm", f"llm_top_{k}_test_accuracy"
            )
            for k in ks
        ]
        ax.plot(ks, base, "k--", marker="s", label="residual top-k")
        full = _get(first, "sparse_probing", "eval_result_metrics", "llm", "llm_test_accuracy")
        if full is not None:
            ax.axhline(full, color="gray", linestyle=":", label="residual, all dims")
        _log_x(ax, ks)
        ax.set(xlabel="k (features in the probe)", ylabel="test accuracy", title="sparse probing")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out_dir / "probing_accuracy_vs_k.png"))
    letters_by_sae = {
        n: _get(r, "absorption_first_letter", "eval_result_details") for n, r in reports.items()
    }
    if any(letters_by_sae.values()):
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / max(1, len(letters_by_sae))
        for i, (name, details) in enumerate(letters_by_sae.items()):
            if not details:
                continue
            xs = [j + i * width for j in range(len(details))]
            ys = [d["mean_absorption_fraction"] or 0.0 for d in details]
            ax.bar(xs, ys, width=width, label=name)
            for x, d in zip(xs, details, strict=True):
                if not d["qualifies"]:
                    ax.text(x, 0, "x", ha="center", va="bottom", fontsize=6, color="gray")
        first = next(d for d in letters_by_sae.values() if d)
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(first))], [d["first_letter"] for d in first]
        )
        ax.set(
            ylabel="mean absorption fraction",
            title="absorption per first letter (x: probe F1 <= 0.6)",
        )
        ax.legend(fontsize=7)
        written.append(_save(fig, out_dir / "absorption_per_letter.png"))
    return written

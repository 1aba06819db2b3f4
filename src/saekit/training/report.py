"""End-of-run outputs: PNG plots of the training curves and density, and a text summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saekit.fileio import atomic_write


def plot_training_curves(records: list[dict[str, Any]], path: Path) -> None:
    """Loss, L0 and explained variance against training tokens, one line per SAE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    train = [r for r in records if r.get("kind") == "train"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, title in zip(
        axes,
        ("loss", "l0", "explained_variance"),
        ("loss", "L0 (active features per token)", "explained variance"),
        strict=True,
    ):
        for name in dict.fromkeys(r["sae"] for r in train):
            rows = [r for r in train if r["sae"] == name]
            ax.plot([r["tokens"] for r in rows], [r[key] for r in rows], label=name)
        ax.set_title(title)
        ax.set_xlabel("training tokens")
        ax.xaxis.set_major_formatter(FuncFormatter(_short_count))
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    if len({r["sae"] for r in train}) > 1:
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _short_count(value: float, _position: int) -> str:
    """Axis label for a token count: 0, 50k, 1.5M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value else "0"


def plot_density_histogram(
    log10_density_by_sae: dict[str, torch.Tensor], path: Path, title: str = "feature density"
) -> None:
    """PNG histogram of log10 feature density, one outline per SAE, on the bins of
    `evals.metrics.density_histogram` (dead features in the leftmost bin; the legend gives
    each SAE's dead count). Used by training runs and `saekit eval`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saekit.evals.metrics import density_histogram

    fig, ax = plt.subplots(figsize=(7, 4))
    filled = len(log10_density_by_sae) == 1
    for name, values_F in log10_density_by_sae.items():
        values_F = values_F.detach().cpu()
        counts, edges = density_histogram(values_F)
        dead, n = int((values_F <= edges[0] + 1e-9).sum()), values_F.numel()
        label = f"{name}: {n} features, {dead} dead ({dead / max(n, 1):.1%})"
        alpha = 0.6 if filled else 1.0
        ax.stairs(counts.numpy(), edges.numpy(), fill=filled, alpha=alpha, label=label)
    ax.set_xlabel("log10 feature density (fraction of tokens on which a feature fires)")
    ax.set_ylabel("features")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def summary_text(
    run_dir: Path,
    tokens: int,
    seconds: float,
    final: dict[str, dict[str, float]],
    folders: dict[str, Path],
) -> str:
    """A short human summary of the run."""
    lines = [
        f"saekit run {run_dir}: {tokens:,} tokens in {seconds:.0f} s "
        f"({tokens / max(seconds, 1e-9):,.0f} tokens/s)"
    ]
    keys = (
        ("l0", "L0", "{:.1f}"),
        ("explained_variance", "expl.var", "{:.3f}"),
        ("ce_loss_recovered", "CE rec.", "{:.3f}"),
        ("kl_div", "KL", "{:.3f}"),
        ("dead_fraction", "dead", "{:.1%}"),
        ("dense_fraction", "dense", "{:.1%}"),
    )
    for name, metrics in final.items():
        shown = [
            f"{label} {fmt.format(metrics[key])}" for key, label, fmt in keys if key in metrics
        ]
        lines.append(f"  {name}: " + ", ".join(shown))
        if "selection_agreement" in metrics:
            lines.append(
                f"    approx-selection: {metrics['selection_agreement']:.2%} of the active "
                "(token, feature) pairs chosen in bfloat16 as in float32 (last check)"
            )
        lines.append(f"    SAE folder: {folders[name]}")
    return "\n".join(lines)

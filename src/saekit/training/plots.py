"""Lab-notebook plots of a run: training curves from `metrics.jsonl`, and a sweep's frontier.

Training metrics are single noisy batches: each is drawn as faint points under an
exponential moving average (`smooth`). Held-back evaluations (`kind: eval` records: every
`--eval-every-tokens` and at the end) are drawn as markers with 95% intervals (1.96 bootstrap
standard errors over documents) where the record has them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from saekit.fileio import save_figure

NICE_TICKS = [m * 10**e for e in range(0, 6) for m in (1, 2, 5)]
EMA_POINTS = 20
"""The moving average spans about len(points) / EMA_POINTS logged steps."""


def smooth(values: Sequence[float], points: int = EMA_POINTS) -> list[float]:
    """Bias-corrected exponential moving average (the first value is not pulled to 0),
    with a span of about `len(values) / points` values; unchanged when that is 1 or less."""
    span = len(values) / points
    if span <= 1:
        return list(values)
    beta = 1 - 1 / span
    out, mean, weight = [], 0.0, 0.0
    for value in values:
        mean = beta * mean + (1 - beta) * value
        weight = beta * weight + (1 - beta)
        out.append(mean / weight)
    return out


def robust_limits(values: Sequence[float], skip: float = 0.2) -> tuple[float, float] | None:
    """y-limits that show the run after its first `skip` fraction, so one early outlier
    (explained variance -6 at the first step) does not squash the rest; None when the
    early values stretch the axis less than threefold."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 5:
        return None
    tail = finite[int(len(finite) * skip) :]
    lo, hi = min(tail), max(finite)
    margin = 0.08 * max(hi - lo, 1e-6)
    if hi - min(finite) <= 3 * max(hi - lo, 1e-6):  # the early values fit well enough
        return None
    return lo - margin, hi + margin


def short_count(value: float, _position: int = 0) -> str:
    """Axis label for a token count: 0, 50k, 1.5M."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value else "0"


def plot_training_curves(
    records: list[dict[str, Any]], path: Path, title: str = "", notes: dict[str, str] | None = None
) -> None:
    """Six panels against training tokens: loss parts, explained variance, L0, dead features,
    learning rate and CE loss recovered; one colour per SAE. `notes` maps an SAE to a remark
    shown in the L0 panel (e.g. that TopK fixes L0 at k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    names = list(dict.fromkeys(r["sae"] for r in train + evals))
    colours = {n: f"C{i % 10}" for i, n in enumerate(names)}
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), sharex=True)
    (ax_loss, ax_ev, ax_l0), (ax_dead, ax_lr, ax_ce) = axes
    for name in names:
        rows = [r for r in train if r["sae"] == name]
        ev_rows = [r for r in evals if r["sae"] == name]
        c = colours[name]
        for key, style in (("mse_loss", "-"), ("sparsity_loss", "--"), ("aux_loss", ":")):
            if any(r.get(key, 0) > 0 for r in rows):
                _curve(ax_loss, rows, key, c, style, positive=True)
        _curve(ax_ev, rows, "explained_variance", c, label=name)
        _evals(ax_ev, ev_rows, "explained_variance", c)
        _curve(ax_l0, rows, "l0", c)
        _evals(ax_l0, ev_rows, "l0", c)
        _curve(ax_dead, rows, "dead_fraction", c, raw=False)
        _evals(ax_dead, ev_rows, "dead_fraction", c, bounds=(0.0, 1.0))
        if rows and (name == names[0] or _differs(rows, train, "lr")):
            ax_lr.plot([r["tokens"] for r in rows], [r["lr"] for r in rows], color=c, lw=1.5)
        _evals(ax_ce, ev_rows, "ce_loss_recovered", c, line=True)
    _limit(ax_ev, [r["explained_variance"] for r in train])
    l0s = [r["l0"] for r in train + evals if r.get("l0", 0) > 0]
    if l0s and max(l0s) / min(l0s) > 20:  # a ReLU's early thousands next to a TopK's k
        ax_l0.set_yscale("log")
    _loss_legend(ax_loss)
    if notes:
        room = 0.15 + 0.08 * len(notes)  # headroom for the note, as a fraction of the axis
        bottom, top = ax_l0.get_ylim()
        if ax_l0.get_yscale() == "log":
            ax_l0.set_ylim(bottom, top * (top / bottom) ** room)
        else:
            ax_l0.set_ylim(bottom, top + room * max(top - bottom, 1.0))
        short = _without_common_prefix(list(notes))
        ax_l0.text(0.98, 0.97, "\n".join(f"{short[n]}: {t}" for n, t in notes.items()), ha="right",
                   va="top", transform=ax_l0.transAxes, fontsize=8, color="#444",
                   bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})  # fmt: skip
    eval_tokens = sorted({int(r.get("eval_tokens", 0)) for r in evals})
    held = f"{'/'.join(f'{t:,}' for t in eval_tokens)} held-back tokens" if evals else ""
    titles = {
        ax_loss: ("loss parts (solid: reconstruction FVU, dashed: sparsity, dotted: aux)", "loss"),
        ax_ev: ("explained variance", "explained variance"),
        ax_l0: ("L0: active features per token", "L0"),
        ax_dead: ("dead features (line: silent for --dead-after-tokens training tokens;\n"
                  "markers: never fired in the held-back evaluation)", "dead fraction"),
        ax_lr: ("learning rate", "lr"),
        ax_ce: ("CE loss recovered (held-back evaluations)", "CE loss recovered"),
    }  # fmt: skip
    for ax, (text, ylabel) in titles.items():
        ax.set_title(text, fontsize=9 if len(text) > 50 else 10)
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_formatter(FuncFormatter(short_count))
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("training tokens")
        ax.tick_params(labelbottom=True)
    ax_dead.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    if not evals:
        ax_ce.text(0.5, 0.5, "no held-back evaluation in this run\n(--eval-tokens 0, or no "
                   "held-back documents)", ha="center", va="center", transform=ax_ce.transAxes,
                   color="#666")  # fmt: skip
    handles = [plt.Line2D([], [], color=colours[n], lw=2) for n in names]
    labels = list(names)
    handles += [plt.Line2D([], [], color="#999", marker=".", ls="", alpha=0.5),
                plt.Line2D([], [], color="#999", marker="o", mfc="white", ls="")]  # fmt: skip
    labels += ["one training batch (faint); line: moving average",
               f"held-back evaluation{f' ({held})' if held else ''}, 95% interval"]  # fmt: skip
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)  # fmt: skip
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.05 + 0.025 * (len(labels) // 5), 1, 0.97))
    save_figure(fig, path)


def _without_common_prefix(names: list[str]) -> dict[str, str]:
    """Sweep names without their shared `<hook>-` prefix: 'topk-k16' for
    'blocks.15.hook_resid_pre-topk-k16' (unchanged when nothing is shared)."""
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    prefix = prefix[: prefix.rfind("-") + 1]
    return {n: n[len(prefix) :] or n for n in names}


def _curve(ax, rows, key, colour, style="-", positive=False, raw=True, label=None) -> None:
    """Faint raw points and their moving average."""
    pairs = [(r["tokens"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    if positive:
        pairs = [(t, v) for t, v in pairs if v > 0]
        ax.set_yscale("log")
    if not pairs:
        return
    x, y = zip(*pairs, strict=True)
    if raw and len(y) > EMA_POINTS:
        ax.plot(x, y, ".", color=colour, alpha=0.25, ms=2.5)
    ax.plot(x, smooth(y), style, color=colour, lw=1.6, label=label)


def _evals(ax, rows, key, colour, line=False, bounds=(-math.inf, math.inf)) -> None:
    """Held-back evaluation points with 95% intervals where the record has a standard error
    (cut at `bounds`: a fraction's interval stays in [0, 1])."""
    pairs = [r for r in rows if key in r and r[key] is not None and math.isfinite(r[key])]
    if not pairs:
        return
    x = [r["tokens"] for r in pairs]
    y = [r[key] for r in pairs]
    se = [r.get(f"{key}_se") for r in pairs]
    err = [1.96 * s if isinstance(s, float) and math.isfinite(s) else 0.0 for s in se]
    low = [min(e, v - bounds[0]) for e, v in zip(err, y, strict=True)]
    high = [min(e, bounds[1] - v) for e, v in zip(err, y, strict=True)]
    ax.errorbar(x, y, yerr=[low, high], fmt="o-" if line else "o", color=colour, mfc="white", ms=6,
                capsize=3, lw=1.0, zorder=5)  # fmt: skip


def _differs(rows, train, key) -> bool:
    first = [r for r in train if r["sae"] == train[0]["sae"]]
    return [r.get(key) for r in rows] != [r.get(key) for r in first]


def _limit(ax, values: list[float]) -> None:
    """Robust y-limits, and a note saying which early values lie below the axis."""
    limits = robust_limits(values)
    if limits is None:
        return
    ax.set_ylim(*limits)
    low = min(v for v in values if math.isfinite(v))
    ax.text(0.98, 0.03, f"axis clipped: the first steps reach {low:.3g}", ha="right",
            transform=ax.transAxes, fontsize=8, color="#666")  # fmt: skip


def _loss_legend(ax) -> None:
    if not ax.lines:
        ax.text(0.5, 0.5, "no positive loss logged", ha="center", transform=ax.transAxes)


def plot_sweep_frontier(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """L0 against explained variance and against CE loss recovered, one point per SAE (95%
    intervals where known); SAEs of one architecture and hook are joined in order of L0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    keys = [
        k for k in ("explained_variance", "ce_loss_recovered") if any(_finite(r, k) for r in rows)
    ]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(6.5 * max(len(keys), 1), 4.8))
    axes = axes if hasattr(axes, "__len__") else [axes]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for ax, key in zip(axes, keys, strict=False):
        for i, group in enumerate(groups):
            points = sorted((r for r in rows if r["group"] == group and _finite(r, key) and _finite(r, "l0")),
                            key=lambda r: r["l0"])  # fmt: skip
            if not points:
                continue
            err = [1.96 * r[f"{key}_se"] if _finite(r, f"{key}_se") else 0.0 for r in points]
            ax.errorbar([r["l0"] for r in points], [r[key] for r in points], yerr=err,
                        fmt="o-", color=f"C{i % 10}", capsize=3, label=group)  # fmt: skip
            for r in points:
                ax.annotate(r["label"], (r["l0"], r[key]), textcoords="offset points",
                            xytext=(5, -10), fontsize=8)  # fmt: skip
        l0s = [r["l0"] for r in rows if _finite(r, "l0") and r["l0"] > 0]
        if l0s and max(l0s) / min(l0s) > 4:
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            lo, hi = min(l0s) / 1.5, max(l0s) * 1.5
            ax.set_xticks([t for t in NICE_TICKS if lo <= t <= hi])
        ax.set_xlabel("L0 (active features per token, held-back text)")
        what = {"explained_variance": "explained variance"}.get(key, "CE loss recovered")
        ax.set_ylabel(what)
        ax.set_title(f"L0 vs {what} (up and left is better)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="95% intervals: 1.96 bootstrap SE", title_fontsize=7)
    if not keys:
        axes[0].text(0.5, 0.5, "no held-back evaluation: nothing to compare", ha="center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def _finite(row: dict[str, Any], key: str) -> bool:
    value = row.get(key)
    return isinstance(value, (int, float)) and math.isfinite(value)

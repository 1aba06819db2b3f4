"""End-of-run outputs: the plots (see `plots.py`), a sweep's table and a text summary.

Two dead-feature figures exist and measure different things; every output names which:
- *held-back*: features that never fired in the final evaluation's tokens (`--eval-tokens`
  of held-back documents), with a bootstrap interval over documents;
- *training*: features silent for the last `--dead-after-tokens` training tokens (the
  figure the dead-feature methods act on; `dead_fraction` of `kind: train` records).
A short window makes more features look dead: compare figures at equal windows.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import torch

from saekit.fileio import atomic_write_text, save_figure
from saekit.training.plots import plot_sweep_frontier, plot_training_curves

SWEEP_FILES = ("sweep_summary.png", "sweep_summary.md", "sweep_summary.csv")


def plot_density_histogram(
    log10_density_by_sae: dict[str, torch.Tensor],
    path: Path,
    title: str = "feature density",
    window: str = "the evaluated tokens",
) -> None:
    """PNG histogram of log10 feature density, one outline per SAE, on the bins of
    `evals.metrics.density_histogram` (dead features in the leftmost bin). `window` names
    the tokens the densities were counted on; the legend gives each SAE's dead count."""
    plot_density_panels({title: (log10_density_by_sae, window)}, path)


def plot_density_panels(
    panels: dict[str, tuple[dict[str, torch.Tensor], str]],
    path: Path,
    suptitle: str = "",
    tokens: dict[str, int] | None = None,
) -> None:
    """One density histogram per panel: {panel title: ({SAE: log10 density}, window)}.
    `tokens[panel]`, where known, marks the lowest density its window can show (one firing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from saekit.evals.metrics import density_histogram

    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.4), squeeze=False)
    for ax, (title, (by_sae, window)) in zip(axes[0], panels.items(), strict=True):
        filled = len(by_sae) == 1
        for name, values_F in by_sae.items():
            values_F = values_F.detach().cpu()
            counts, edges = density_histogram(values_F)
            dead, n = int((values_F <= edges[0] + 1e-9).sum()), values_F.numel()
            label = f"{name}: {dead} of {n} dead ({dead / max(n, 1):.1%})"
            ax.stairs(counts.numpy(), edges.numpy(), fill=filled, alpha=0.6 if filled else 1.0,
                      label=label)  # fmt: skip
        n_tokens = (tokens or {}).get(title)
        if n_tokens:
            ax.axvline(-math.log10(n_tokens), color="#888", ls=":", lw=1)
            ax.annotate(f"1 firing in {n_tokens:,}", (-math.log10(n_tokens), 0.5),
                        xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                        color="#666", ha="right", va="center")  # fmt: skip
        ax.set_xlabel("log10 feature density (fraction of tokens on which a feature fires)")
        ax.set_ylabel("features")
        ax.set_title(f"{title}\ncounted on {window}; dead = never fired there (leftmost bin)",
                     fontsize=9)  # fmt: skip
        ax.legend(fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def describe_sae(sae: Any) -> str:
    """'topk k=32, d_sae 4608' from an SAE's config."""
    cfg = getattr(sae, "cfg", None)
    if cfg is None:
        return type(sae).__name__
    setting = getattr(sae, "sparsity_setting", "")
    value = getattr(cfg, setting, None) if setting else None
    short = {"k": "k", "l1_coefficient": "l1", "l0_coefficient": "l0 coef."}.get(setting, setting)
    arch = _architecture(sae)
    parts = [arch + (f" {short}={value:g}" if value is not None else "")]
    return ", ".join([*parts, f"d_sae {cfg.d_sae}"])


def _architecture(sae: Any) -> str:
    """The registered architecture name, or the class name (a cross-layer transcoder)."""
    return str(getattr(sae.cfg, "architecture", type(sae).__name__))


def run_title(run_dir: Path, model: str, units: list[Any], tokens: int) -> str:
    """The run, its model and hooks, its SAE (or how many) and the tokens trained."""
    hooks = list(dict.fromkeys(getattr(u, "hook_in", "?") for u in units))
    what = describe_sae(units[0].sae) if len(units) == 1 else f"{len(units)} SAEs"
    hook = hooks[0] if len(hooks) == 1 else f"{len(hooks)} hooks"
    return f"{run_dir.name}: {model} · {hook} · {what} · {tokens:,} tokens trained"


def constant_l0_notes(records: list[dict[str, Any]]) -> dict[str, str]:
    """SAEs whose training L0 never moves (TopK fixes it at k): a note for the L0 panel."""
    by_sae: dict[str, list[float]] = {}
    for r in records:
        if r.get("kind") == "train" and "l0" in r:
            by_sae.setdefault(r["sae"], []).append(r["l0"])
    return {
        name: f"L0 = {values[0]:g} at every step (fixed by the architecture)"
        for name, values in by_sae.items()
        if len(values) > 1 and max(values) - min(values) < 1e-6
    }


def sweep_rows(units: list[Any], final: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per SAE for the sweep table and frontier: settings and held-back metrics."""
    hooks = {getattr(u, "hook_in", "") for u in units}
    rows = []
    for unit in units:
        cfg, m = unit.sae.cfg, final.get(unit.name, {})
        setting = getattr(unit.sae, "sparsity_setting", "")
        value = getattr(cfg, setting, None) if setting else None
        short = {"k": "k", "l1_coefficient": "l1", "l0_coefficient": "l0c"}.get(setting, setting)
        label = f"{short}={value:g}" if value is not None else "default"
        group = _architecture(unit.sae) + (f" {unit.hook_in}" if len(hooks) > 1 else "")
        rows.append({
            "sae": unit.name, "architecture": _architecture(unit.sae), "d_sae": cfg.d_sae,
            "setting": label, "label": label, "group": f"{group} d_sae {cfg.d_sae}",
            **{k: m.get(k, math.nan) for k in SWEEP_COLUMNS[4:]},
        })  # fmt: skip
    return rows


SWEEP_COLUMNS = ("sae", "architecture", "d_sae", "setting", "l0", "explained_variance",
                 "explained_variance_se", "ce_loss_recovered", "ce_loss_recovered_se", "kl_div",
                 "dead_fraction", "dead_fraction_se", "eval_tokens")  # fmt: skip


def write_sweep_summary(run_dir: Path, rows: list[dict[str, Any]], title: str) -> None:
    """`sweep_summary.png` (the L0 frontier), `.md` and `.csv` (one row per SAE)."""
    plot_sweep_frontier(rows, run_dir / SWEEP_FILES[0], title)
    atomic_write_text(run_dir / SWEEP_FILES[1], sweep_markdown(rows, title))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: ("" if _nan(v) else v) for k, v in r.items()} for r in rows)
    atomic_write_text(run_dir / SWEEP_FILES[2], buffer.getvalue())


def sweep_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """The sweep as a markdown table, best explained variance first."""
    head = ("| SAE | arch | d_sae | setting | L0 | explained variance | CE loss recovered | "
            "KL | dead (held-back) |")  # fmt: skip
    lines = [f"# {title}", "", head, "|" + "---|" * 9]
    order = sorted(
        rows,
        key=lambda r: -r["explained_variance"] if not _nan(r["explained_variance"]) else math.inf,
    )
    for r in order:
        lines.append(
            f"| {r['sae']} | {r['architecture']} | {r['d_sae']} | {r['setting']} | "
            f"{_num(r['l0'], '{:.1f}')} | {_pm(r, 'explained_variance')} | "
            f"{_pm(r, 'ce_loss_recovered')} | {_num(r['kl_div'], '{:.3f}')} | "
            f"{_num(r['dead_fraction'], '{:.1%}')} |"
        )
    tokens = {int(r["eval_tokens"]) for r in rows if not _nan(r["eval_tokens"])}
    lines += ["", f"Measured on {' / '.join(f'{t:,}' for t in sorted(tokens)) or 'no'} held-back "
              "tokens; +- is one bootstrap standard error over documents. Dead: never fired "
              "in those tokens."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any, fmt: str) -> str:
    return "–" if _nan(value) else fmt.format(value)


def _pm(row: dict[str, Any], key: str) -> str:
    se = row.get(f"{key}_se")
    return _num(row[key], "{:.3f}") + ("" if _nan(se) else f" ± {se:.3f}")


def dead_line(metrics: dict[str, float], dead_after_tokens: int | None) -> str | None:
    """Both dead-feature figures, each named by its window, the held-back one with a 95%
    interval (1.96 bootstrap standard errors over documents)."""
    parts = []
    if "dead_fraction" in metrics and "eval_tokens" in metrics:
        value, se = metrics["dead_fraction"], metrics.get("dead_fraction_se", math.nan)
        interval = ""
        if isinstance(se, float) and math.isfinite(se):
            lo, hi = max(0.0, value - 1.96 * se), min(1.0, value + 1.96 * se)
            interval = f" [95%: {lo:.1%}-{hi:.1%}]"
        parts.append(f"{value:.1%}{interval} never fired in {int(metrics['eval_tokens']):,} "
                     "held-back tokens")  # fmt: skip
    if "train_dead_fraction" in metrics and dead_after_tokens:
        parts.append(f"{metrics['train_dead_fraction']:.1%} silent for the last "
                     f"{dead_after_tokens:,} training tokens")  # fmt: skip
    return "    dead features: " + "; ".join(parts) if parts else None


def summary_text(
    run_dir: Path,
    tokens: int,
    seconds: float,
    final: dict[str, dict[str, float]],
    folders: dict[str, Path],
    *,
    total_tokens: int | None = None,
    requested_tokens: int | None = None,
    dead_after_tokens: int | None = None,
) -> str:
    """A short human summary of the run. `tokens` were trained in this session's `seconds`;
    `total_tokens`, when larger, is the run's total (a resumed run); `requested_tokens`
    (--tokens) is named when whole batches made the total differ from it."""
    first = (f"saekit run {run_dir}: {tokens:,} tokens in {seconds:.0f} s "
             f"({tokens / max(seconds, 1e-9):,.0f} tokens/s)")  # fmt: skip
    total = tokens if total_tokens is None else total_tokens
    if total != tokens:
        first += f"; resumed: {total:,} tokens trained in all"
    if requested_tokens is not None and requested_tokens != total:
        first += f" (--tokens {requested_tokens:,}, rounded down to whole batches)"
    lines = [first]
    keys = (
        ("l0", "L0", "{:.1f}"),
        ("explained_variance", "expl.var", "{:.3f}"),
        ("ce_loss_recovered", "CE rec.", "{:.3f}"),
        ("kl_div", "KL", "{:.3f}"),
        ("dense_fraction", "dense", "{:.1%}"),
    )
    for name, metrics in final.items():
        shown = [
            f"{label} {fmt.format(metrics[key])}" for key, label, fmt in keys if key in metrics
        ]
        where = (
            f" (on {int(metrics['eval_tokens']):,} held-back tokens)"
            if "eval_tokens" in metrics
            else ""
        )
        lines.append(f"  {name}: " + ", ".join(shown) + where)
        dead = dead_line(metrics, dead_after_tokens)
        if dead is None and "dead_fraction" in metrics:  # no window known (a test's metrics)
            dead = f"    dead features: {metrics['dead_fraction']:.1%}"
        if dead:
            lines.append(dead)
        if "selection_agreement" in metrics:
            lines.append(
                f"    approx-selection: {metrics['selection_agreement']:.2%} of the active "
                "(token, feature) pairs chosen in bfloat16 as in float32 (last check)"
            )
        if name in folders:  # not the replacement model of a run's transcoders
            lines.append(f"    SAE folder: {folders[name]}")
    return "\n".join(lines)


def density_window(unit: Any, batch_tokens: int) -> int:
    """Training tokens behind `Trainer.density(unit)`: the current window, or (when it is
    under half full) the last complete one, which ended at the first batch reaching
    `dead_after_tokens`."""
    firing = unit.firing
    if unit.last_density_F is not None and firing.window_tokens < firing.dead_after_tokens // 2:
        return -(-firing.dead_after_tokens // batch_tokens) * batch_tokens
    return firing.window_tokens


def write_run_reports(
    run_dir: Path,
    records: list[dict[str, Any]],
    units: list[Any],
    trainer: Any,
    final: dict[str, dict[str, float]],
    eval_density: dict[str, torch.Tensor],
    title: str,
) -> list[Path]:
    """Every plot of a finished run (and a sweep's table); returns the files written.
    `eval_density`: the final evaluation's log10 feature density per SAE."""
    from saekit.evals.metrics import log10_feature_density

    windows = sorted({density_window(u, trainer.cfg.batch_tokens) for u in units})
    held = sorted({int(m["eval_tokens"]) for m in final.values() if "eval_tokens" in m})
    densities = {
        "training windows": (
            {u.name: log10_feature_density(trainer.density(u)) for u in units},
            f"the last {'/'.join(f'{w:,}' for w in windows)} training tokens",
        ),
        "held-back evaluation": (
            {n: d for n, d in eval_density.items() if n in final},
            f"{'/'.join(f'{t:,}' for t in held)} held-back tokens (final evaluation)",
        ),
    }
    written = []
    if records:
        plot_training_curves(
            records, run_dir / "training_curves.png", title, constant_l0_notes(records)
        )
        written.append(run_dir / "training_curves.png")
    panels = {k: v for k, v in densities.items() if v[0]}
    if panels:
        lowest = {
            "training windows": min(windows, default=0),
            "held-back evaluation": min(held, default=0),
        }
        plot_density_panels(panels, run_dir / "feature_density.png", title, lowest)
        written.append(run_dir / "feature_density.png")
    if len(units) > 1:
        write_sweep_summary(run_dir, sweep_rows(units, final), title)
        written += [run_dir / f for f in SWEEP_FILES]
    return written

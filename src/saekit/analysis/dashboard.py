"""Static HTML feature dashboards: an index page plus one page per feature.

Every page is self-contained (inline CSS, inline SVG, a few lines of inline JS to sort the index
table) and refers to nothing outside the output folder, so it opens from disk with no network.
All token text is HTML-escaped; spaces, tabs and newlines are drawn as visible glyphs.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from saekit.analysis.features import Examples, FeatureStats, collect_feature_stats
from saekit.analysis.logit_lens import LogitEffects, logit_effects, token_strings
from saekit.analysis.special_positions import after_special_examples, after_special_note
from saekit.fileio import atomic_write_text

N_QUANTILE_GROUPS = 4
PER_GROUP = 5
_ASSETS = resources.files("saekit.analysis")
CSS, SORT_JS, SEARCH_JS = (
    (_ASSETS / name).read_text(encoding="utf-8")
    for name in ("dashboard.css", "dashboard_sort.js", "dashboard_search.js")
)


def feature_page_name(feature: int) -> str:
    """File name of a feature's page inside the dashboard folder."""
    return f"feature_{feature}.html"


def build_dashboard(
    sae,
    lm,
    batches: Iterable[tuple[Tensor, Tensor]],
    feature_ids: Sequence[int],
    out_dir: str | Path,
    *,
    max_tokens: int | None = None,
    n_logits: int = 10,
    title: str = "SAE features",
    progress: bool = False,
    interp: dict[int, dict] | None = None,
    exclude_after_special: int = 0,
    **collector_kwargs,
) -> Path:
    """One pass over ``batches`` for all ``feature_ids``, then write the dashboard.

    ``collector_kwargs`` go to :class:`~saekit.analysis.features.FeatureStatsCollector`
    (``top_k``, ``n_samples``, ``context_left``, ...). ``exclude_after_special=N`` leaves out
    the N positions after each special token (and the first N of each window). Returns the
    path of ``index.html``.
    """
    stats = collect_feature_stats(
        sae, lm, batches, feature_ids, max_tokens=max_tokens, progress=progress,
        exclude_after_special=exclude_after_special,
        special_ids=getattr(lm.tokenizer, "all_special_ids", ()), **collector_kwargs,
    )  # fmt: skip
    effects = logit_effects(sae, lm, feature_ids, k=n_logits)
    meta = sae.cfg.metadata
    subtitle = f"{getattr(meta, 'model_name', '?')} · {getattr(meta, 'hook_name', '?')}"
    if exclude_after_special:
        subtitle += f" · {exclude_after_special} position(s) after special tokens excluded"
    return write_dashboard(
        out_dir, stats, effects, lm.tokenizer, title=title, subtitle=subtitle, interp=interp,
        after_special_excluded=exclude_after_special > 0,
    )  # fmt: skip


def write_dashboard(
    out_dir: str | Path,
    stats: FeatureStats,
    effects: Sequence[LogitEffects],
    tokenizer,
    *,
    title: str = "SAE features",
    subtitle: str = "",
    interp: dict[int, dict] | None = None,
    after_special_excluded: bool = False,
) -> Path:
    """Write ``index.html``, one ``feature_<id>.html`` per feature and ``features.json``.

    ``interp`` maps a feature to its autointerp result (``saekit explain``'s results.jsonl
    lines): the explanation and scores are shown, and the index is searchable by them.
    A feature whose top examples mostly sit right after a special token gets a note (unless
    ``after_special_excluded``: such positions were left out)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    effects_by_id = {e.feature: e for e in effects}
    ids = sorted(
        set(stats.top.tokens_FKW.flatten().tolist())
        | set(stats.samples.tokens_FKW.flatten().tolist())
    )
    ids = [i for i in ids if i >= 0]
    text = dict(zip(ids, token_strings(tokenizer, ids), strict=False))
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    summary = []
    for n, feature in enumerate(stats.feature_ids):
        page = _feature_page(n, stats, effects_by_id.get(feature), text, title, subtitle)
        after, shown, before = after_special_examples(stats, n, special)
        crowded = not after_special_excluded and shown and 2 * after >= shown
        if crowded:
            note = after_special_note(after, shown, [text.get(t, "?") for t in before])
            page = page.replace('<div class="cols">', note + '<div class="cols">', 1)
        found = (interp or {}).get(feature)
        if found is not None:
            page = page.replace('<div class="cols">', _interp_block(found), 1)
        atomic_write_text(out / feature_page_name(feature), page)
        summary.append(_summary(n, stats, effects_by_id.get(feature), text))
        summary[-1]["top_after_special"] = round(after / shown, 3) if shown else None
        summary[-1]["after_special_note"] = bool(crowded)
        if interp is not None:
            summary[-1]["explanation"] = (found or {}).get("explanation")
            summary[-1]["interp_scores"] = _interp_scores(found)
    atomic_write_text(out / "index.html", _index_page(summary, stats, title, subtitle))
    atomic_write_text(out / "features.json", json.dumps(summary, indent=1))
    return out / "index.html"


def _summary(
    n: int, stats: FeatureStats, effects: LogitEffects | None, text: dict[int, str]
) -> dict:
    """The numbers shown for one feature on the index page (also saved as JSON)."""
    top, centre = stats.top, stats.context_left
    seen: dict[str, None] = {}
    for k in torch.nonzero(top.valid_FK[n]).flatten().tolist():
        seen.setdefault(text.get(int(top.tokens_FKW[n, k, centre]), ""), None)
    mean = float(stats.mean_act_F[n])
    return {
        "feature": stats.feature_ids[n],
        "density": float(stats.density_F[n]),
        "fire_count": int(stats.fire_count_F[n]),
        "mean_activation": None if mean != mean else mean,
        "max_activation": float(stats.act_max_F[n]),
        "top_activating_tokens": list(seen)[:6],
        "top_boosted_tokens": [t for _, t, _ in effects.positive[:6]] if effects else [],
        "top_suppressed_tokens": [t for _, t, _ in effects.negative[:6]] if effects else [],
    }


# ---------------------------------------------------------------------------- HTML pieces


def _tok(s: str) -> str:
    """Escaped token text with whitespace drawn visibly."""
    out = html.escape(s)
    for raw, glyph in ((" ", "·"), ("\t", "⇥"), ("\n", "↵")):
        out = out.replace(raw, f'<span class="ws">{glyph}</span>')
    return out


def _attr(s: str) -> str:
    return html.escape(s, quote=True)


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body>{body}{js}</body></html>\n"
    )


def _token_list(tokens: list[str], limit: int = 6) -> str:
    return " ".join(f'<code class="t">{_tok(t)}</code>' for t in tokens[:limit])


def _interp_scores(found: dict | None) -> dict[str, float]:
    """Balanced accuracy per scorer (and of the shuffled baseline) of one autointerp result."""
    out = {}
    for key, label in (("scores", ""), ("shuffled", " (shuffled)")):
        for scorer, m in ((found or {}).get(key) or {}).items():
            if isinstance(m, dict):
                out[scorer + label] = round(m["balanced_accuracy"], 3)
    return out


def _interp_block(found: dict) -> str:
    text = found.get("explanation") or f"(none: {found.get('skipped', 'not explained')})"
    scores = ", ".join(f"{k} {v:.2f}" for k, v in _interp_scores(found).items())
    return (
        f'<p class="interp"><b>Explanation:</b> {html.escape(text)}'
        f"{f' <span class=sub>(balanced accuracy: {html.escape(scores)})</span>' if scores else ''}"
        '</p><div class="cols">'
    )


def _index_page(summary: list[dict], stats: FeatureStats, title: str, subtitle: str) -> str:
    with_interp = any("explanation" in s for s in summary)
    rows = []
    for s in summary:
        f, dead = s["feature"], s["fire_count"] == 0
        mean = "–" if s["mean_activation"] is None else f"{s['mean_activation']:.3g}"
        rows.append(
            f'<tr class="{"dead" if dead else ""}" id="f{f}">'
            f'<td data-v="{f}"><a href="{feature_page_name(f)}">{f}</a></td>'
            f'<td data-v="{s["density"]:.6g}">{s["density"]:.3e}</td>'
            f'<td data-v="{s["mean_activation"] or 0:.6g}">{mean}</td>'
            f'<td data-v="{s["max_activation"]:.6g}">{s["max_activation"]:.3g}</td>'
            f"<td>{_token_list(s['top_activating_tokens']) if not dead else 'never fires'}"
            f"{_CROWDED if s.get('after_special_note') else ''}</td>"
            f"<td>{_token_list(s['top_boosted_tokens'])}</td>"
            + (_interp_cell(s) if with_interp else "")
            + "</tr>"
        )
    facts = [x for x in (subtitle, f"{stats.n_tokens:,} tokens", f"{len(summary)} features") if x]
    body = (
        f'<h1>{html.escape(title)}</h1><p class="sub">{html.escape(" · ".join(facts))}</p>'
        '<table id="features" class="index"><thead><tr>'
        "<th>feature</th><th>density</th><th>mean act</th><th>max act</th>"
        "<th>top activating tokens</th><th>top boosted logits</th>"
        + ("<th>explanation (balanced accuracy)</th>" if with_interp else "")
        + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="sub">Click a column header to sort.</p>'
    )
    if with_interp:
        search = (
            '<p><input id="search" type="search" placeholder="search explanations" size="40"></p>'
        )
        body = body.replace('<table id="features"', search + '<table id="features"', 1)
    return _page(title, body, SORT_JS + (SEARCH_JS if with_interp else ""))


_CROWDED = (
    ' <span class="sub" title="at least half of the top examples sit right after a special '
    'token: see the feature page">(after special tokens)</span>'
)


def _interp_cell(s: dict) -> str:
    scores = ", ".join(
        f"{k} {v:.2f}" for k, v in s.get("interp_scores", {}).items() if "(" not in k
    )
    text = html.escape(s.get("explanation") or "")
    return f'<td class="expl">{text}{f" <span class=sub>({scores})</span>" if scores else ""}</td>'


def _feature_page(
    n: int,
    stats: FeatureStats,
    effects: LogitEffects | None,
    text: dict[int, str],
    title: str,
    subtitle: str,
) -> str:
    feature = stats.feature_ids[n]
    max_act = float(stats.act_max_F[n])
    prev_next = []
    if n > 0:
        prev_next.append(f'<a href="{feature_page_name(stats.feature_ids[n - 1])}">← prev</a>')
    prev_next.append('<a href="index.html">index</a>')
    if n + 1 < len(stats.feature_ids):
        prev_next.append(f'<a href="{feature_page_name(stats.feature_ids[n + 1])}">next →</a>')
    mean = float(stats.mean_act_F[n])
    facts = (
        f"<tr><th>density</th><td>{float(stats.density_F[n]):.3e} "
        f"({int(stats.fire_count_F[n]):,} of {stats.n_tokens:,} tokens)</td></tr>"
        f"<tr><th>mean activation (when firing)</th><td>{'–' if mean != mean else f'{mean:.4g}'}</td></tr>"
        f"<tr><th>max activation</th><td>{max_act:.4g}</td></tr>"
    )
    body = (
        f"<nav>{' · '.join(prev_next)}</nav><h1>Feature {feature}</h1>"
        f'<p class="sub">{html.escape(subtitle)}</p>'
        f'<div class="cols"><div><table class="facts">{facts}</table>'
        f"<h2>Activation histogram (nonzero)</h2>{_histogram_svg(n, stats)}</div>"
        f"<div><h2>Logit effects</h2>{_logit_tables(effects)}</div></div>"
        f'<h2>Top activations</h2><div class="examples" id="top">'
        f"{_example_rows(n, stats.top, stats.context_left, max_act, text)}</div>"
        f'<h2>Samples from lower quantiles</h2><div id="quantiles">'
        f"{_quantile_groups(n, stats, max_act, text)}</div>"
    )
    return _page(f"Feature {feature} · {title}", body)


def _example_rows(
    n: int,
    ex: Examples,
    centre: int,
    max_act: float,
    text: dict[int, str],
    ks: Iterable[int] | None = None,
) -> str:
    ks = torch.nonzero(ex.valid_FK[n]).flatten().tolist() if ks is None else ks
    rows = []
    for k in ks:
        cells = []
        for w, (tok, act) in enumerate(
            zip(ex.tokens_FKW[n, k].tolist(), ex.acts_FKW[n, k].tolist(), strict=False)
        ):
            if tok < 0:
                continue
            alpha = max(0.0, min(1.0, act / max_act)) if max_act > 0 else 0.0
            cls = "tok cur" if w == centre else "tok"
            tip = _attr(f"{text.get(tok, '')!r}  activation {act:.4g}")
            cells.append(
                f'<span class="{cls}" style="background:rgba(255,102,0,{alpha:.3f})" '
                f'title="{tip}">{_tok(text.get(tok, ""))}</span>'
            )
        loc = f"row {int(ex.rows_FK[n, k])}, pos {int(ex.positions_FK[n, k])}"
        rows.append(
            f'<div class="ex"><span class="val" title="{loc}">{float(ex.values_FK[n, k]):.3f}</span>'
            f'<span class="ctx">{"".join(cells)}</span></div>'
        )
    return "".join(rows) or '<p class="sub">This feature never fired on these tokens.</p>'


def _quantile_groups(n: int, stats: FeatureStats, max_act: float, text: dict[int, str]) -> str:
    """The random sample of firing positions, split into activation quantile groups."""
    sample = stats.samples
    valid = torch.nonzero(sample.valid_FK[n]).flatten().tolist()  # sorted by value, descending
    if not valid:
        return '<p class="sub">No samples.</p>'
    out = []
    chunks = [
        valid[
            round(i * len(valid) / N_QUANTILE_GROUPS) : round(
                (i + 1) * len(valid) / N_QUANTILE_GROUPS
            )
        ]
        for i in range(N_QUANTILE_GROUPS)
    ]
    for g, chunk in enumerate(chunks):
        if not chunk:
            continue
        hi_q = 100 - g * 100 // N_QUANTILE_GROUPS
        lo_q = 100 - (g + 1) * 100 // N_QUANTILE_GROUPS
        lo, hi = float(sample.values_FK[n, chunk[-1]]), float(sample.values_FK[n, chunk[0]])
        pick = chunk[:: max(1, len(chunk) // PER_GROUP)][:PER_GROUP]
        out.append(
            f"<h3>quantile {lo_q}–{hi_q}% of firing activations ({lo:.3g} – {hi:.3g})</h3>"
            f'<div class="examples">{_example_rows(n, sample, stats.context_left, max_act, text, pick)}</div>'
        )
    return "".join(out)


def _histogram_svg(n: int, stats: FeatureStats, width: int = 420, height: int = 160) -> str:
    counts = stats.hist_counts_FH[n].tolist()
    used = max((i + 1 for i, c in enumerate(counts) if c), default=0)
    if not used:
        return '<p class="sub">No nonzero activations.</p>'
    edges = stats.hist_edges(n).tolist()
    top = 16  # room for the y label above the bars
    peak, bar_w, plot_h = max(counts), width / used, height - 34 - top
    bars = []
    for i in range(used):
        h = plot_h * counts[i] / peak
        bars.append(
            f'<rect class="bar" x="{i * bar_w:.2f}" y="{top + plot_h - h:.2f}" width="{max(bar_w - 1, 0.5):.2f}" '
            f'height="{h:.2f}"><title>{edges[i]:.4g} – {edges[i + 1]:.4g}: {counts[i]}</title></rect>'
        )
    return (
        f'<svg class="hist" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(bars)}'
        f'<text x="0" y="{top + plot_h + 13}">0</text>'
        f'<text x="{width}" y="{top + plot_h + 13}" text-anchor="end">{edges[used]:.3g}</text>'
        f'<text class="axis" x="{width / 2}" y="{height - 3}" text-anchor="middle">'
        "activation (firing positions only)</text>"
        f'<text class="axis" x="2" y="12">positions (tallest bar: {peak:,})</text></svg>'
    )


def _logit_tables(effects: LogitEffects | None) -> str:
    if effects is None:
        return '<p class="sub">Not computed.</p>'

    def table(rows: list[tuple[int, str, float]], cls: str, head: str) -> str:
        body = "".join(
            f'<tr><td><code class="t" title="id {i}">{_tok(t)}</code></td><td class="{cls}">{v:+.3f}</td></tr>'
            for i, t, v in rows
        )
        return f'<table class="logits"><thead><tr><th colspan="2">{head}</th></tr></thead>{body}</table>'

    return (
        '<div class="cols">'
        + table(effects.positive, "pos", "boosted")
        + table(effects.negative, "neg", "suppressed")
        + "</div>"
    )

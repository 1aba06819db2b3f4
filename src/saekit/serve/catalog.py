"""What the server knows about each SAE: statistics, logit effects, explanations, as JSON.

`collect_all` fills each `Entry` once at start-up (in the worker): the one-pass statistics of
`saekit.analysis.FeatureStatsCollector` over the SAE's own token stream (its provenance
record, `saekit.data.provenance.token_batches`), the logit-lens effects of every feature
(`saekit.analysis.logit_effects`) and the explanations of `saekit explain`
(`saekit.autointerp.run.read_results`). Pages then read these numbers without the model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saekit.analysis.features import FeatureStats, FeatureStatsCollector
from saekit.analysis.logit_lens import logit_effects, token_strings
from saekit.data.provenance import DataSettings, token_batches

N_QUANTILE_GROUPS = 4
PER_GROUP = 5
LOGIT_CHUNK = 256
SORT_KEYS = ("feature", "density", "max_activation", "mean_activation", "score")


class NotFound(LookupError):
    """An unknown SAE, feature or job (HTTP 404)."""


@dataclass
class Entry:
    """One SAE served: the model-free numbers its pages show."""

    name: str
    path: str
    sae: Any
    data: DataSettings
    feature_ids: list[int]
    interp: dict[int, dict] = field(default_factory=dict)
    stats: FeatureStats | None = None
    rows: list[dict] = field(default_factory=list)
    logits: dict[int, dict] = field(default_factory=dict)
    position: dict[int, int] = field(default_factory=dict)  # feature -> index in stats

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def is_transcoder(self) -> bool:
        return bool(self.sae.cfg.is_transcoder)

    def describe(self) -> dict:
        """The SAE's facts for the page header."""
        meta = self.sae.cfg.metadata
        return {
            "name": self.name, "path": self.path, "d_sae": self.d_sae,
            "architecture": self.sae.cfg.architecture, "hook": meta.hook_name,
            "hook_out": meta.hook_name_out, "model": self.data.model,
            "dataset": self.data.dataset, "indexed": len(self.feature_ids),
            "tokens": self.stats.n_tokens if self.stats else 0,
            "explained": len(self.interp), "ready": self.stats is not None,
        }  # fmt: skip

    def check_feature(self, feature: int) -> int:
        """The feature's index in the statistics; `NotFound` naming the valid range."""
        if not 0 <= feature < self.d_sae:
            raise NotFound(
                f"feature {feature} is out of range: SAE {self.name} has [0, {self.d_sae})"
            )
        if feature not in self.position:
            raise NotFound(
                f"feature {feature} of SAE {self.name} was not indexed (start the server with "
                "--features covering it)"
            )
        return self.position[feature]


def unique_names(paths: Sequence[str]) -> list[str]:
    """Short URL-safe names for SAE folders: the last path parts that tell them apart."""
    parts = [Path(p).resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
    return [
        re.sub(r"[^A-Za-z0-9._-]+", "_", n).strip("_") or f"sae{i}" for i, n in enumerate(names)
    ]


def collect_all(
    entries: Sequence[Entry],
    lm,
    max_tokens: int,
    report: Callable[[float, str], None],
    **collector_kwargs,
) -> None:
    """Fill every entry: one pass per token stream, shared by the SAEs that read it.

    SAEs whose provenance records agree except for the hook (a sweep, transcoders for every
    layer) share each forward, as `collect_feature_stats` does for one SAE: the model runs to
    the deepest of their hooks, each SAE encodes its own hook's activations."""
    groups: dict[DataSettings, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.data.replace(hooks=()), []).append(entry)
    for g, (data, group) in enumerate(groups.items()):
        hooks = [e.data.hooks[0] if e.data.hooks else e.sae.cfg.metadata.hook_name for e in group]
        collectors = []
        for entry in group:
            device = entry.sae.W_dec.device
            collectors.append(
                FeatureStatsCollector(entry.feature_ids, device=device, **collector_kwargs)
            )
        for ids_BT, keep_BT in token_batches(data, lm.tokenizer, data.forward_rows):
            acts = lm.run_to_hooks(ids_BT.to(lm.device), sorted(set(hooks)))
            for entry, hook, collector in zip(group, hooks, collectors, strict=True):
                sae = entry.sae
                with torch.no_grad():
                    f_BTF = sae.encode(acts[hook].to(sae.W_dec.device, sae.W_dec.dtype))
                collector.update(ids_BT, keep_BT, f_BTF[..., entry.feature_ids])
            seen = collectors[0].n_tokens
            names = ", ".join(e.name for e in group)
            report(
                (g + min(seen / max_tokens, 1.0)) / len(groups),
                f"{names}: {seen:,} of {max_tokens:,} tokens",
            )
            if seen >= max_tokens:
                break
        for entry, collector in zip(group, collectors, strict=True):
            _finish(entry, collector.result(), lm)


def _finish(entry: Entry, stats: FeatureStats, lm) -> None:
    """Logit effects and index rows of an entry whose statistics are collected."""
    entry.position = {f: n for n, f in enumerate(stats.feature_ids)}
    try:
        for start in range(0, len(entry.feature_ids), LOGIT_CHUNK):
            chunk = entry.feature_ids[start : start + LOGIT_CHUNK]
            for e in logit_effects(entry.sae, lm, chunk, k=10):
                entry.logits[e.feature] = {"positive": e.positive, "negative": e.negative}
    except ValueError:  # the decoder does not write into the residual stream's width
        entry.logits = {}
    entry.rows = [_row(entry, stats, n, lm.tokenizer) for n in range(len(stats.feature_ids))]
    entry.stats = stats


def _row(entry: Entry, stats: FeatureStats, n: int, tokenizer) -> dict:
    feature = stats.feature_ids[n]
    top, centre = stats.top, stats.context_left
    ids = [int(top.tokens_FKW[n, k, centre]) for k in torch.nonzero(top.valid_FK[n]).flatten()]
    found = entry.interp.get(feature) or {}
    mean = float(stats.mean_act_F[n])
    return {
        "feature": feature,
        "density": float(stats.density_F[n]),
        "fire_count": int(stats.fire_count_F[n]),
        "mean_activation": None if math.isnan(mean) else mean,
        "max_activation": float(stats.act_max_F[n]),
        "top_activating_tokens": list(dict.fromkeys(token_strings(tokenizer, ids)))[:6],
        "top_boosted_tokens": [t for _, t, _ in entry.logits.get(feature, {}).get("positive", [])][
            :6
        ],
        "explanation": found.get("explanation"),
        "score": interp_score(found),
    }


def interp_score(found: dict) -> float | None:
    """Mean balanced accuracy over the scorers of one `saekit explain` result (None: unscored)."""
    values = [
        m["balanced_accuracy"]
        for m in (found.get("scores") or {}).values()
        if isinstance(m, dict) and m.get("balanced_accuracy") is not None
    ]
    return sum(values) / len(values) if values else None


def search(
    entry: Entry,
    *,
    q: str = "",
    min_density: float | None = None,
    max_density: float | None = None,
    ranked: list[tuple[int, float]] | None = None,
    sort: str = "feature",
    descending: bool = False,
) -> list[dict]:
    """Index rows matching the explanation text ``q`` and the density bounds.

    ``ranked`` (feature, score) pairs, e.g. by how much each boosts a token, restrict and
    order the result (``sort`` is then ignored)."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort={sort!r} is not one of {', '.join(SORT_KEYS)}")
    words = q.lower().split()

    def keep(row: dict) -> bool:
        text = (row["explanation"] or "").lower()
        return (
            all(w in text for w in words)
            and (min_density is None or row["density"] >= min_density)
            and (max_density is None or row["density"] <= max_density)
        )

    if ranked is not None:
        out = []
        for feature, score in ranked:
            if feature in entry.position and keep(row := entry.rows[entry.position[feature]]):
                out.append({**row, "token_score": score})
        return out
    rows = [r for r in entry.rows if keep(r)]
    missing = [r for r in rows if r[sort] is None]
    present = sorted(
        (r for r in rows if r[sort] is not None), key=lambda r: r[sort], reverse=descending
    )
    return present + missing


def _examples(ex, n: int, ks: list[int], centre: int, text: dict[int, str]) -> list[dict]:
    out = []
    for k in ks:
        tokens, acts = [], []
        for tok, act in zip(ex.tokens_FKW[n, k].tolist(), ex.acts_FKW[n, k].tolist(), strict=True):
            if tok >= 0:
                tokens.append(text[tok])
                acts.append(act)
        lead = sum(1 for t in ex.tokens_FKW[n, k, :centre].tolist() if t >= 0)
        out.append({
            "value": float(ex.values_FK[n, k]), "row": int(ex.rows_FK[n, k]),
            "position": int(ex.positions_FK[n, k]), "tokens": tokens, "acts": acts,
            "centre": lead,
        })  # fmt: skip
    return out


def feature_detail(entry: Entry, feature: int, tokenizer) -> dict:
    """Everything the feature page shows, as JSON."""
    n = entry.check_feature(feature)
    stats = entry.stats
    assert stats is not None
    ids = sorted(
        {t for t in stats.top.tokens_FKW[n].flatten().tolist() if t >= 0}
        | {t for t in stats.samples.tokens_FKW[n].flatten().tolist() if t >= 0}
    )
    text = dict(zip(ids, token_strings(tokenizer, ids), strict=True))
    top_ks = torch.nonzero(stats.top.valid_FK[n]).flatten().tolist()
    valid = torch.nonzero(stats.samples.valid_FK[n]).flatten().tolist()  # descending by value
    groups = []
    for g in range(N_QUANTILE_GROUPS):
        chunk = valid[
            round(g * len(valid) / N_QUANTILE_GROUPS) : round(
                (g + 1) * len(valid) / N_QUANTILE_GROUPS
            )
        ]
        if not chunk:
            continue
        pick = chunk[:: max(1, len(chunk) // PER_GROUP)][:PER_GROUP]
        groups.append({
            "upper_percent": 100 - g * 100 // N_QUANTILE_GROUPS,
            "lower_percent": 100 - (g + 1) * 100 // N_QUANTILE_GROUPS,
            "low": float(stats.samples.values_FK[n, chunk[-1]]),
            "high": float(stats.samples.values_FK[n, chunk[0]]),
            "examples": _examples(stats.samples, n, pick, stats.context_left, text),
        })  # fmt: skip
    found = entry.interp.get(feature) or {}
    scores = {name: m for name, m in (found.get("scores") or {}).items() if isinstance(m, dict)}
    return {
        **entry.rows[n],
        "sae": entry.name,
        "n_tokens": stats.n_tokens,
        "histogram": {
            "counts": stats.hist_counts_FH[n].tolist(),
            "edges": stats.hist_edges(n).tolist(),
        },
        "logits": entry.logits.get(feature),
        "top": _examples(stats.top, n, top_ks, stats.context_left, text),
        "quantiles": groups,
        "scores": {
            k: {m: v[m] for m in ("balanced_accuracy", "precision", "recall", "auc") if m in v}
            for k, v in scores.items()
        },  # fmt: skip
        "shuffled": {
            k: m.get("balanced_accuracy")
            for k, m in (found.get("shuffled") or {}).items()
            if isinstance(m, dict)
        },  # fmt: skip
        "prev": _neighbour(entry, n, -1),
        "next": _neighbour(entry, n, +1),
    }


def _neighbour(entry: Entry, n: int, step: int) -> int | None:
    m = n + step
    return entry.feature_ids[m] if 0 <= m < len(entry.feature_ids) else None

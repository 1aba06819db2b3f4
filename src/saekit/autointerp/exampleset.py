"""Collected examples on disk (safetensors + JSON) and the windows chosen per feature.

``examples.safetensors`` holds the tensors of a :class:`CollectedExamples`; ``examples.json``
holds the scalar facts, the text of every token id that occurs (so explaining and scoring run
without the model or its tokenizer) and where the examples come from. No pickles.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saekit.analysis.features import Examples, FeatureStats
from saekit.autointerp.examples import CollectedExamples
from saekit.fileio import atomic_write, atomic_write_text

TENSORS_FILE = "examples.safetensors"
META_FILE = "examples.json"
_STATS_TENSORS = ("fire_count_F", "act_sum_F", "act_max_F", "hist_counts_FH", "hist_hi_F")


@dataclass
class Window:
    """One example window as text: ``tokens[i]`` has activation ``acts[i]``."""

    id: str  # e.g. "top3", "q2.7" (quantile 2), "rand5", "hard1"
    kind: str  # top | quantile | random | hard
    tokens: list[str]
    acts: list[float]
    centre: int  # index of the example token in `tokens`
    quantile: int | None = None

    @property
    def activating(self) -> bool:
        """Whether the feature fires in this window (top and quantile windows)."""
        return self.kind in ("top", "quantile")


@dataclass
class FeatureExamples:
    """The windows one feature is explained and scored with."""

    feature: int
    max_act: float
    density: float
    explain: list[Window] = field(default_factory=list)
    activating: list[Window] = field(default_factory=list)  # quantile samples, for scoring
    non_activating: list[Window] = field(default_factory=list)  # random (+ hard)


@dataclass
class ExampleSet:
    """Collected examples with the text of their tokens; saved and loaded without the model."""

    collected: CollectedExamples
    token_text: dict[int, str]  # special tokens map to "" (they are not shown)
    meta: dict[str, Any]  # sae, provenance, settings of the collection

    @property
    def feature_ids(self) -> list[int]:
        """The features, in collection order."""
        return self.collected.stats.feature_ids

    @classmethod
    def from_collected(
        cls, collected: CollectedExamples, tokenizer: Any, meta: dict[str, Any] | None = None
    ) -> ExampleSet:
        """Attach the text of every token id the windows use (special tokens become "")."""
        from saekit.analysis.logit_lens import token_strings

        parts = [collected.stats.top, collected.stats.samples, collected.random, collected.hard]
        ids = sorted({i for ex in parts if ex is not None for i in ex.tokens_FKW.unique().tolist()})
        ids = [i for i in ids if i >= 0]
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        text = dict(zip(ids, token_strings(tokenizer, ids), strict=True))
        text = {i: "" if i in special else t for i, t in text.items()}
        return cls(collected, text, dict(meta or {}))

    # --- disk
    def save(self, folder: str | Path) -> Path:
        """Write ``examples.safetensors`` + ``examples.json`` into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        c, s = self.collected, self.collected.stats
        tensors = {name: getattr(s, name) for name in _STATS_TENSORS}
        for prefix, ex in (("top", s.top), ("samples", s.samples), ("random", c.random),
                           ("hard", c.hard)):  # fmt: skip
            if ex is not None:
                for f in dataclasses.fields(Examples):
                    tensors[f"{prefix}.{f.name}"] = getattr(ex, f.name)
        if c.neighbours_FN is not None:
            tensors["neighbours_FN"] = c.neighbours_FN
            tensors["neighbour_cos_FN"] = c.neighbour_cos_FN
        tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
        atomic_write(folder / TENSORS_FILE, lambda tmp: save_file(tensors, tmp))
        meta = {
            "format": "saekit-autointerp-examples/1",
            "feature_ids": s.feature_ids, "n_tokens": s.n_tokens, "n_rows": s.n_rows,
            "context_left": s.context_left, "context_right": s.context_right,
            "token_text": {str(k): v for k, v in self.token_text.items()},
            **self.meta,
        }  # fmt: skip
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ExampleSet:
        """Read what :meth:`save` wrote."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / TENSORS_FILE).is_file() or not (folder / META_FILE).is_file():
            raise FileNotFoundError(f"{folder}: no {TENSORS_FILE} + {META_FILE} (collect first)")
        t = load_file(str(folder / TENSORS_FILE))
        meta = json.loads((folder / META_FILE).read_text())

        def examples(prefix: str) -> Examples | None:
            if f"{prefix}.values_FK" not in t:
                return None
            return Examples(
                **{f.name: t[f"{prefix}.{f.name}"] for f in dataclasses.fields(Examples)}
            )

        stats = FeatureStats(
            feature_ids=list(meta.pop("feature_ids")), n_tokens=meta.pop("n_tokens"),
            n_rows=meta.pop("n_rows"), context_left=meta.pop("context_left"),
            context_right=meta.pop("context_right"), top=examples("top"),
            samples=examples("samples"), **{name: t[name] for name in _STATS_TENSORS},
        )  # fmt: skip
        collected = CollectedExamples(
            stats=stats, random=examples("random"), hard=examples("hard"),
            neighbours_FN=t.get("neighbours_FN"), neighbour_cos_FN=t.get("neighbour_cos_FN"),
        )  # fmt: skip
        text = {int(k): v for k, v in meta.pop("token_text").items()}
        meta.pop("format", None)
        return cls(collected, text, meta)

    # --- choosing windows
    def window(self, ex: Examples, n: int, k: int, id: str, kind: str, **kw: Any) -> Window:
        """Window ``k`` of feature index ``n`` in ``ex`` as text (tokens outside rows dropped)."""
        centre = self.collected.stats.context_left
        tokens, acts, at = [], [], 0
        for w, (tok, act) in enumerate(
            zip(ex.tokens_FKW[n, k].tolist(), ex.acts_FKW[n, k].tolist(), strict=True)
        ):
            if w == centre:
                at = len(tokens)
            if tok < 0 or (self.token_text.get(tok, "") == "" and w != centre):
                continue
            tokens.append(self.token_text.get(tok, ""))
            acts.append(float(act))
        return Window(id=id, kind=kind, tokens=tokens, acts=acts, centre=at, **kw)

    def select(
        self,
        n: int,
        *,
        n_explain: int = 10,
        n_activating: int = 10,
        n_random: int = 10,
        n_hard: int = 0,
        n_quantiles: int = 5,
        seed: int = 0,
    ) -> FeatureExamples:
        """The windows of the ``n``-th feature: top ones to explain, quantile and
        non-activating ones to score. Windows overlapping an already chosen one are skipped."""
        stats, c = self.collected.stats, self.collected
        rng = random.Random(f"{seed}:{stats.feature_ids[n]}")
        span = stats.context_left + stats.context_right + 1
        taken: list[tuple[int, int]] = []

        def fresh(ex: Examples, k: int) -> bool:
            row, pos = int(ex.rows_FK[n, k]), int(ex.positions_FK[n, k])
            if any(r == row and abs(p - pos) < span for r, p in taken):
                return False
            taken.append((row, pos))
            return True

        def valid(ex: Examples | None) -> list[int]:
            return [] if ex is None else torch.nonzero(ex.valid_FK[n]).flatten().tolist()

        out = FeatureExamples(stats.feature_ids[n], float(stats.act_max_F[n]),
                              float(stats.density_F[n]))  # fmt: skip
        for k in valid(stats.top):
            if len(out.explain) < n_explain and fresh(stats.top, k):
                out.explain.append(self.window(stats.top, n, k, f"top{k}", "top"))
        pool = [k for k in valid(stats.samples) if fresh(stats.samples, k)]  # sorted, descending
        for q, group in enumerate(_split(pool, n_quantiles)):
            want = n_activating // n_quantiles + (q < n_activating % n_quantiles)
            for k in sorted(rng.sample(group, min(want, len(group)))):
                out.activating.append(
                    self.window(stats.samples, n, k, f"q{q}.{k}", "quantile", quantile=q)
                )
        for k in valid(c.random)[:n_random]:
            out.non_activating.append(self.window(c.random, n, k, f"rand{k}", "random"))
        for k in valid(c.hard)[:n_hard]:
            out.non_activating.append(self.window(c.hard, n, k, f"hard{k}", "hard"))
        return out


def _split(items: list[int], parts: int) -> list[list[int]]:
    """``items`` cut into ``parts`` consecutive groups of (nearly) equal size."""
    return [items[round(i * len(items) / parts) : round((i + 1) * len(items) / parts)]
            for i in range(parts)]  # fmt: skip

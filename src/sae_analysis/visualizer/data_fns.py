"""`get_feature_data`: feature dashboards for given tokens, as the original visualizer made.

The statistics come from one pass of `saekit.analysis.collect_feature_stats`; the pages are
saekit's dashboard pages (`saekit.analysis.write_dashboard`): top activations with their
context, samples from lower quantiles, the activation histogram and the logit effects. The
original's neuron-alignment and feature-correlation tables are not computed.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.analysis import collect_feature_stats, logit_effects, write_dashboard
from saekit.analysis.dashboard import feature_page_name


@dataclass
class FeatureData:
    """One feature's dashboard: its page (`get_all_html()`) and the numbers on it."""

    feature: int
    html: str
    summary: dict[str, Any]
    """density, fire_count, mean/max activation, top activating / boosted / suppressed tokens."""

    def get_all_html(self, debug: bool = False) -> str:
        """The feature's dashboard page (self-contained HTML)."""
        return self.html

    def save(self, filename: str) -> str:
        """Write the page to `filename`; returns it."""
        Path(filename).write_text(self.html)
        return filename


@torch.no_grad()
def get_feature_data(
    encoder: Any,
    model: Any,
    hook_point: str,
    hook_point_layer: int | None = None,
    hook_point_head_index: int | None = None,
    tokens: Tensor | None = None,
    feature_idx: int | list[int] | None = None,
    max_batch_size: int | None = None,
    left_hand_k: int = 3,
    buffer: tuple[int, int] = (5, 5),
    n_groups: int = 10,
    first_group_size: int = 20,
    other_groups_size: int = 5,
    verbose: bool = False,
) -> dict[int, FeatureData]:
    """`{feature: FeatureData}` for `feature_idx` over `tokens` `[batch, seq]` at `hook_point`.

    `buffer` is the context (left, right) shown around each example; `first_group_size`
    the number of top examples; `(n_groups - 1) * other_groups_size` the number of sampled
    lower-quantile examples. Special tokens (BOS, ...) are not counted as examples.
    """
    if hook_point_head_index is not None:
        raise ValueError("per-head hooks (hook_point_head_index) are not supported")
    if tokens is None or feature_idx is None:
        raise ValueError("get_feature_data needs tokens and feature_idx")
    ids = [int(feature_idx)] if isinstance(feature_idx, int) else [int(f) for f in feature_idx]
    rows = max_batch_size or len(tokens)
    special = torch.tensor(sorted(model.special_token_ids) or [-1])

    def batches():
        for start in range(0, len(tokens), rows):
            tokens_BT = tokens[start : start + rows]
            yield tokens_BT, ~torch.isin(tokens_BT, special)

    stats = collect_feature_stats(
        encoder, model, batches(), ids, hook=hook_point, progress=verbose,
        top_k=first_group_size, n_samples=max((n_groups - 1) * other_groups_size, 1),
        context_left=buffer[0], context_right=buffer[1],
    )  # fmt: skip
    effects = logit_effects(encoder, model, ids, k=10)
    with tempfile.TemporaryDirectory() as tmp:
        write_dashboard(tmp, stats, effects, model.tokenizer, title="feature dashboards",
                        subtitle=f"{model.spec} · {hook_point}")  # fmt: skip
        summaries = {s["feature"]: s for s in json.loads((Path(tmp) / "features.json").read_text())}
        return {
            f: FeatureData(f, (Path(tmp) / feature_page_name(f)).read_text(), summaries[f])
            for f in ids
        }


__all__ = ["FeatureData", "get_feature_data"]

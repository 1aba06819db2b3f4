"""Examples for autointerp, collected in ONE model pass (extends the dashboards' collector).

Per requested feature, on top of what :class:`~saekit.analysis.features.FeatureStatsCollector`
keeps (top-activating windows, a uniform sample of firing positions for the quantiles):

- ``random``: uniformly sampled windows in which the feature fires on no token (bottom-k
  sampling with random keys, like the quantile sample);
- ``hard`` (optional): the windows where one of the feature's decoder-direction neighbours
  fires most strongly while the feature itself fires on no token of the window.

Windows are ``window`` tokens long with the example token at index ``window - window // 4``
(delphi's centring: 3/4 of the window before the token). Random and hard windows lie wholly
inside their row, so their example token sits at that index too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor

from saekit.analysis.features import (
    Examples,
    FeatureStats,
    FeatureStatsCollector,
    _examples,
)


def window_sides(window: int) -> tuple[int, int]:
    """(tokens before, tokens after) the example token in a window of ``window`` tokens."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    left = window - window // 4
    left = min(left, window - 1)
    return left, window - 1 - left


@torch.no_grad()
def decoder_neighbours(sae: Any, feature_ids: Sequence[int], n: int) -> tuple[Tensor, Tensor]:
    """The ``n`` features whose decoder rows are closest in cosine to each requested feature.

    Returns ``(ids_FN, cosines_FN)``; a feature is never its own neighbour.
    """
    W_dec_SO = sae.W_dec.detach().float()
    unit_SO = W_dec_SO / W_dec_SO.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ids_F = torch.tensor(list(feature_ids), device=unit_SO.device)
    cos_FS = unit_SO[ids_F] @ unit_SO.T
    cos_FS[torch.arange(len(ids_F)), ids_F] = float("-inf")
    n = min(n, W_dec_SO.shape[0] - 1)
    top = cos_FS.topk(n, dim=1)
    return top.indices.cpu(), top.values.cpu()


class ExampleCollector(FeatureStatsCollector):
    """The dashboards' one-pass statistics plus random and hard non-activating windows.

    ``neighbours_FN`` holds, for each requested feature, column indices into the
    ``neighbour_acts_BTG`` passed to :meth:`update` (needed only when ``n_hard > 0``).
    """

    def __init__(
        self,
        feature_ids: Sequence[int],
        *,
        n_random: int = 40,
        n_hard: int = 0,
        neighbours_FN: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(feature_ids, **kwargs)
        if n_hard > 0 and neighbours_FN is None:
            raise ValueError("hard negatives (n_hard > 0) need neighbours_FN")
        self.n_random, self.n_hard = n_random, n_hard
        self.neighbours_FN = None if neighbours_FN is None else neighbours_FN.to(self.device)
        self._random: dict[str, Tensor] | None = None
        self._hard: dict[str, Tensor] | None = None

    @torch.no_grad()
    def update(
        self,
        input_ids_BT: Tensor,
        keep_mask_BT: Tensor,
        acts_BTF: Tensor,
        neighbour_acts_BTG: Tensor | None = None,
    ) -> None:
        """Add one batch (see the base class); ``neighbour_acts_BTG`` feeds the hard negatives."""
        n_rows_before = self.n_rows  # the base class advances it; our windows use the old value
        super().update(input_ids_BT, keep_mask_BT, acts_BTF)
        self.n_rows = n_rows_before
        dev = self.device
        B, T, F = acts_BTF.shape
        ids_BT = input_ids_BT.to(dev)
        keep_BT = keep_mask_BT.to(dev, torch.bool)
        acts_BTF = acts_BTF.to(dev, torch.float32) * keep_BT[..., None]
        quiet_BTF = self._quiet_windows(acts_BTF > 0) & keep_BT[..., None]
        quiet_BTF &= self._inside_rows(T)[None, :, None]
        if self.n_random > 0:
            keys_BTF = torch.rand(acts_BTF.shape, generator=self.generator, device=dev)
            keys_NF = keys_BTF.masked_fill(~quiet_BTF, -1.0).reshape(B * T, F)
            self._random = self._merge(self._random, keys_NF, self.n_random, ids_BT, acts_BTF)
        if self.n_hard > 0:
            if neighbour_acts_BTG is None:
                raise ValueError("n_hard > 0: pass neighbour_acts_BTG to update()")
            nb_BTG = neighbour_acts_BTG.to(dev, torch.float32) * keep_BT[..., None]
            score_BTF = torch.zeros_like(acts_BTF)
            for j in range(self.neighbours_FN.shape[1]):
                score_BTF = torch.maximum(score_BTF, nb_BTG[..., self.neighbours_FN[:, j]])
            score_BTF = score_BTF.masked_fill(~quiet_BTF | (score_BTF <= 0), -1.0)
            self._hard = self._merge(
                self._hard, score_BTF.reshape(B * T, F), self.n_hard, ids_BT, acts_BTF
            )
        self.n_rows += B

    def _quiet_windows(self, fires_BTF: Tensor) -> Tensor:
        """True where the feature fires on no token of the window around the position."""
        B, T, F = fires_BTF.shape
        x = fires_BTF.permute(0, 2, 1).reshape(B * F, 1, T).float()
        x = nnf.pad(x, (self.left, self.right))
        any_fire = nnf.max_pool1d(x, kernel_size=self.left + self.right + 1, stride=1)
        return (any_fire.reshape(B, F, T).permute(0, 2, 1)) == 0

    def _inside_rows(self, T: int) -> Tensor:
        t_T = torch.arange(T, device=self.device)
        return (t_T >= self.left) & (t_T < T - self.right)

    def random_examples(self) -> Examples:
        """The random non-activating windows."""
        if self._random is None:
            raise ValueError("no random windows were collected (n_random=0 or no batch)")
        return _examples(self._random, sort=True)

    def hard_examples(self) -> Examples | None:
        """The hard-negative windows (None when not collected), strongest neighbour first."""
        return None if self._hard is None else _examples(self._hard, sort=False)


@dataclass
class CollectedExamples:
    """What one pass collects: statistics, top/sample windows and non-activating windows."""

    stats: FeatureStats
    random: Examples
    hard: Examples | None
    neighbours_FN: Tensor | None  # decoder-direction neighbours used for the hard negatives
    neighbour_cos_FN: Tensor | None


@torch.no_grad()
def collect_examples(
    sae: Any,
    lm: Any,
    batches: Iterable[tuple[Tensor, Tensor]],
    feature_ids: Sequence[int],
    *,
    max_tokens: int | None = None,
    window: int = 32,
    top_k: int = 40,
    n_samples: int = 200,
    n_random: int = 40,
    n_hard: int = 0,
    n_neighbours: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> CollectedExamples:
    """One model pass over ``(input_ids_BT, keep_mask_BT)`` batches (stops after ``max_tokens``).

    The model runs up to the SAE's ``metadata.hook_name``; the SAE encodes every feature once
    and the requested ones (plus their decoder neighbours for ``n_hard > 0``) are collected.
    """
    from tqdm.auto import tqdm

    hook = sae.cfg.metadata.hook_name
    param = next(sae.parameters())
    left, right = window_sides(window)
    neighbours_FN = cos_FN = None
    if n_hard > 0:
        neighbours_FN, cos_FN = decoder_neighbours(sae, feature_ids, n_neighbours)
    union_G, local_FN = (None, None)
    if neighbours_FN is not None:
        union_G, inverse = torch.unique(neighbours_FN, return_inverse=True)
        local_FN = inverse.reshape(neighbours_FN.shape)
        union_G = union_G.to(param.device)
    collector = ExampleCollector(
        feature_ids, n_random=n_random, n_hard=n_hard, neighbours_FN=local_FN, top_k=top_k,
        n_samples=n_samples, context_left=left, context_right=right, seed=seed,
        device=param.device,
    )  # fmt: skip
    ids_F = torch.tensor(list(feature_ids), device=param.device)
    bar = tqdm(total=max_tokens, unit="tok", disable=not progress, desc="examples")
    for input_ids_BT, keep_BT in batches:
        acts_BTD = lm.run_to_hooks(input_ids_BT.to(lm.device), [hook])[hook]
        feats_BTS = sae.encode(acts_BTD.to(param.device, param.dtype))
        nb_BTG = feats_BTS[..., union_G] if union_G is not None else None
        before = collector.n_tokens
        collector.update(input_ids_BT, keep_BT, feats_BTS[..., ids_F], nb_BTG)
        bar.update(collector.n_tokens - before)
        if max_tokens is not None and collector.n_tokens >= max_tokens:
            break
    bar.close()
    return CollectedExamples(
        stats=collector.result(),
        random=collector.random_examples(),
        hard=collector.hard_examples(),
        neighbours_FN=neighbours_FN,
        neighbour_cos_FN=cos_FN,
    )

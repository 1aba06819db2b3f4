"""Standard errors of the headline metrics, by a bootstrap over the documents evaluated.

Tokens of one document are correlated (a code listing, a table, one topic), so the resampling
units are documents: the stretches of text between the separators the token windows carry
(an EOS between documents, which is not a kept position), across window boundaries
(`document_units`). When the special tokens are kept, no separator is visible and each
window is a unit. `UnitSums` keeps, per unit, the sums every headline metric is a function
of; `standard_errors` redraws the units with replacement `RESAMPLES` times (a fixed seed, so
reports are reproducible) and returns the standard deviation of each metric over the redraws:

- explained variance: 1 - SSE / SST, SST around the redrawn tokens' mean;
- CE loss recovered: (zero - spliced) / (zero - clean), each a sum of next-token CE;
- KL: the sum of per-token KL over the number of counted tokens;
- KL score: (sum of zero-ablated KL - sum of spliced KL) / sum of zero-ablated KL;
- dead fraction: features that fire in none of the redrawn units. It is skipped (NaN) when
  units x features exceeds `MAX_FIRING_ENTRIES`.

A 95% interval is about the value +- 1.96 standard errors, for another draw of documents of
the same kind. Explained variance and the dead fraction also shift with the number of tokens
(SST is taken around the evaluated tokens' own mean; a rare feature needs many tokens to
fire): compare them at equal token counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

RESAMPLES = 200
MAX_FIRING_ENTRIES = 1 << 24
SE_KEYS = (
    "explained_variance_se",
    "ce_loss_recovered_se",
    "kl_div_se",
    "kl_div_score_se",
    "dead_fraction_se",
)


def document_units(keep_masks: Sequence[Tensor]) -> list[Tensor]:
    """Per batch of windows (in stream order), `[B, T]`: the document of each position.

    A document ends at each position inside a window (not its first, the BOS) that is not
    kept; without any, each window is a unit.
    """
    separators = []
    for keep_BT in keep_masks:
        sep_BT = ~keep_BT.bool().cpu()
        sep_BT[:, 0] = False
        separators.append(sep_BT)
    units, offset = [], 0
    seen_any = any(bool(s.any()) for s in separators)
    for sep_BT in separators:
        B, T = sep_BT.shape
        if seen_any:
            units_BT = sep_BT.flatten().cumsum(0).view(B, T) + offset
            offset += int(sep_BT.sum())
        else:
            units_BT = (torch.arange(B) + offset)[:, None].expand(B, T)
            offset += B
        units.append(units_BT)
    return units


class UnitSums:
    """Per-unit sums of one SAE's evaluation, added batch by batch."""

    def __init__(self) -> None:
        self._parts: dict[str, list[tuple[Tensor, Tensor]]] = {}  # name -> [(units, sums)]
        self.fires: bool = True  # per-unit firing kept (off above MAX_FIRING_ENTRIES)

    @classmethod
    def from_totals(cls, totals: dict[str, Tensor]) -> UnitSums:
        """The sums of `totals()` (of these or other units, e.g. a subset) as a `UnitSums`."""
        sums = cls()
        for name, total in totals.items():
            sums._parts[name] = [(torch.arange(total.shape[0]), total)]
        sums.fires = "fires" in totals
        return sums

    def _add(self, name: str, units_N: Tensor, values_N: Tensor) -> None:
        """Sum `values_N` (any trailing shape) per unit and keep the sums."""
        ids, inverse_N = torch.unique(units_N.cpu(), return_inverse=True)
        values_N = values_N.detach().cpu()
        sums = values_N.new_zeros((ids.numel(), *values_N.shape[1:])).index_add_(
            0, inverse_N, values_N
        )
        self._parts.setdefault(name, []).append((ids, sums))

    @torch.no_grad()
    def add_reconstruction(
        self, target_BTD: Tensor, x_hat_BTD: Tensor, feats_BTF: Tensor, keep_BT: Tensor,
        units_BT: Tensor,
    ) -> None:  # fmt: skip
        """One batch: targets, reconstructions and features at every position, and units."""
        keep_BT = keep_BT.to(target_BTD.device)
        units_N = units_BT.to(keep_BT.device)[keep_BT]
        target_ND = target_BTD[keep_BT].double()
        error_ND = x_hat_BTD.to(target_BTD.device)[keep_BT].double() - target_ND
        self._add("tokens", units_N, torch.ones(units_N.shape[0], dtype=torch.float64))
        self._add("sse", units_N, error_ND.pow(2).sum(dim=-1))
        self._add("sxx", units_N, target_ND.pow(2).sum(dim=-1))
        self._add("sx", units_N, target_ND)
        if self.fires:
            fired_NF = feats_BTF[keep_BT.to(feats_BTF.device)] != 0
            self._add("fires", units_N, fired_NF.float())
            entries = sum(s.numel() for _, s in self._parts["fires"])
            if entries > MAX_FIRING_ENTRIES:
                self.fires = False
                del self._parts["fires"]

    def add_losses(self, units_M: Tensor, **values_M: Tensor) -> None:
        """Per-token losses of one batch at the counted positions, `units_M` their units."""
        for name, value_M in values_M.items():
            self._add(name, units_M, value_M.double())

    def merge(self, other: UnitSums) -> None:
        """Add `other`'s sums (the same units numbering, e.g. another rank's windows)."""
        for name, parts in other._parts.items():
            self._parts.setdefault(name, []).extend(parts)
        if not (self.fires and other.fires):
            self.fires = False
            self._parts.pop("fires", None)

    def totals(self) -> dict[str, Tensor]:
        """Every sum per unit, `[U]` or `[U, D]`; `fires` as 0/1 (fired in the unit)."""
        n_units = 1 + max(
            (int(ids.max()) for parts in self._parts.values() for ids, _ in parts), default=-1
        )
        out = {}
        for name, parts in self._parts.items():
            shape = (n_units, *parts[0][1].shape[1:])
            total = torch.zeros(shape, dtype=parts[0][1].dtype)
            for ids, sums in parts:
                total.index_add_(0, ids, sums)
            out[name] = (total > 0).float() if name == "fires" else total
        return out


def standard_errors(sums: UnitSums, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Bootstrap standard errors of the headline metrics (NaN with fewer than two units).

    When the losses cover only some units (`evaluate_saes(ce_tokens=...)`), their standard
    errors come from a bootstrap over those units alone."""
    totals = sums.totals()
    result = dict.fromkeys(SE_KEYS, math.nan)
    result.update(_bootstrap(totals, resamples, seed))
    counted = totals.get("counted")
    if counted is not None and bool((counted == 0).any()):
        with_losses = counted > 0
        part = _bootstrap({k: t[with_losses] for k, t in totals.items()}, resamples, seed)
        for key in LOSS_SE_KEYS:
            result[key] = part.get(key, math.nan)
    return result


LOSS_SE_KEYS = ("ce_loss_recovered_se", "kl_div_se", "kl_div_score_se")


def _bootstrap(totals: dict[str, Tensor], resamples: int, seed: int) -> dict[str, float]:
    n_units = totals["tokens"].numel() if "tokens" in totals else 0
    if n_units < 2:
        return {}
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_units, (resamples, n_units), generator=generator)
    counts_RU = torch.zeros(resamples, n_units, dtype=torch.float64)
    counts_RU.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    result = {}
    for key, draws_R in weighted_metrics(totals, counts_RU).items():
        finite_R = draws_R[torch.isfinite(draws_R)]
        result[f"{key}_se"] = finite_R.std().item() if finite_R.numel() > 1 else math.nan
    return result


def weighted_metrics(totals: dict[str, Tensor], weights_RU: Tensor) -> dict[str, Tensor]:
    """The headline metrics `[R]` of R weightings of the units (a bootstrap's counts, or 0/1
    rows that pick disjoint blocks); `totals` from `UnitSums.totals`; keys without `_se`."""
    weights_RU = weights_RU.double()
    total = {name: weights_RU @ t.double() for name, t in totals.items() if name != "fires"}
    sst_R = total["sxx"] - total["sx"].pow(2).sum(dim=1) / total["tokens"]
    values = {"explained_variance": 1 - total["sse"] / sst_R}
    if {"clean", "spliced", "zero"} <= total.keys():
        zero = total["zero"]
        values["ce_loss_recovered"] = (zero - total["spliced"]) / (zero - total["clean"])
    if {"kl", "counted"} <= total.keys():
        values["kl_div"] = total["kl"] / total["counted"]
        if "kl_zero" in total:
            values["kl_div_score"] = (total["kl_zero"] - total["kl"]) / total["kl_zero"]
    if "fires" in totals:
        fired_RF = weights_RU.float() @ totals["fires"]
        values["dead_fraction"] = (fired_RF == 0).double().mean(dim=1)
    return values

"""Standard errors of the headline metrics, by a bootstrap over evaluation windows.

The evaluation tokens come as windows (rows of `context` tokens); neighbouring tokens are
correlated, windows much less so, so windows are the resampling unit. `WindowSums` keeps, per
window, the sums every headline metric is a function of; `standard_errors` redraws the windows
with replacement `RESAMPLES` times (a fixed seed, so reports are reproducible) and returns the
standard deviation of each metric over the redraws:

- explained variance: 1 - SSE / SST, SST around the redrawn tokens' mean;
- CE loss recovered: (zero - spliced) / (zero - clean), each a sum of next-token CE;
- KL: the sum of per-token KL over the number of counted tokens;
- dead fraction: features that fire in none of the redrawn windows. It is skipped (NaN) when
  windows x features exceeds `MAX_FIRING_ENTRIES`.

A 95% interval is about the value +- 1.96 standard errors. Windows cut from one document are
not independent, so the errors are, if anything, slightly low.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

RESAMPLES = 200
MAX_FIRING_ENTRIES = 1 << 24
SE_KEYS = ("explained_variance_se", "ce_loss_recovered_se", "kl_div_se", "dead_fraction_se")


class WindowSums:
    """Per-window sums of one SAE's evaluation, added batch by batch in window order."""

    def __init__(self) -> None:
        self.tokens: list[Tensor] = []  # each [B]: kept tokens per window
        self.sse: list[Tensor] = []  # squared error
        self.sxx: list[Tensor] = []  # squared norm of the target
        self.sx: list[Tensor] = []  # [B, D]: sum of the target
        self.fires: list[Tensor] | None = []  # [B, F] bool: the feature fired in the window
        self.losses: dict[str, list[Tensor]] = {}  # name -> [B] sums of per-token losses

    @torch.no_grad()
    def add_reconstruction(
        self, target_BTD: Tensor, x_hat_BTD: Tensor, feats_BTF: Tensor, keep_BT: Tensor
    ) -> None:
        """One batch of windows: targets, reconstructions and features at every position."""
        keep_BT1 = keep_BT.to(target_BTD.device).unsqueeze(-1)
        target_BTD = target_BTD.double() * keep_BT1
        error_BTD = (x_hat_BTD.to(target_BTD.device).double() - target_BTD) * keep_BT1
        self.tokens.append(keep_BT.sum(dim=1).double().cpu())
        self.sse.append(error_BTD.pow(2).sum(dim=(1, 2)).cpu())
        self.sxx.append(target_BTD.pow(2).sum(dim=(1, 2)).cpu())
        self.sx.append(target_BTD.sum(dim=1).cpu())
        if self.fires is not None:
            fired_BTF = (feats_BTF != 0) & keep_BT.to(feats_BTF.device).unsqueeze(-1)
            self.fires.append(fired_BTF.any(dim=1).cpu())
            if sum(f.numel() for f in self.fires) > MAX_FIRING_ENTRIES:
                self.fires = None

    @property
    def windows(self) -> int:
        """Windows added so far."""
        return sum(t.numel() for t in self.tokens)

    def add_losses(self, windows: int, rows_M: Tensor, **values_M: Tensor) -> None:
        """Per-token losses of one batch of `windows` windows, `rows_M` the window of each."""
        rows_M = rows_M.cpu()
        for name, value_M in values_M.items():
            sums_B = torch.zeros(windows, dtype=torch.float64)
            sums_B.index_add_(0, rows_M, value_M.detach().double().cpu())
            self.losses.setdefault(name, []).append(sums_B)


def standard_errors(
    sums: WindowSums, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """Bootstrap standard errors of the headline metrics (NaN with fewer than two windows)."""
    n_windows = sums.windows
    if n_windows < 2:
        return dict.fromkeys(SE_KEYS, math.nan)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n_windows, (resamples, n_windows), generator=generator)
    counts_RW = torch.zeros(resamples, n_windows, dtype=torch.float64)
    counts_RW.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    result = dict.fromkeys(SE_KEYS, math.nan)
    for key, draws_R in weighted_metrics(sums, counts_RW).items():
        finite_R = draws_R[torch.isfinite(draws_R)]
        result[f"{key}_se"] = finite_R.std().item() if finite_R.numel() > 1 else math.nan
    return result


def weighted_metrics(sums: WindowSums, weights_RW: Tensor) -> dict[str, Tensor]:
    """The headline metrics `[R]` of R weightings of the windows (a bootstrap's counts, or 0/1
    rows that pick disjoint blocks of windows); keys as in the results, without `_se`."""
    weights_RW = weights_RW.double()

    def total(parts: list[Tensor]) -> Tensor:
        return weights_RW @ torch.cat(parts)

    sx_RD = total(sums.sx)
    sst_R = total(sums.sxx) - sx_RD.pow(2).sum(dim=1) / total(sums.tokens)
    values = {"explained_variance": 1 - total(sums.sse) / sst_R}
    losses = {name: total(parts) for name, parts in sums.losses.items()}
    if {"clean", "spliced", "zero"} <= losses.keys():
        zero = losses["zero"]
        values["ce_loss_recovered"] = (zero - losses["spliced"]) / (zero - losses["clean"])
    if {"kl", "counted"} <= losses.keys():
        values["kl_div"] = losses["kl"] / losses["counted"]
    if sums.fires:
        fired_RF = weights_RW.float() @ torch.cat(sums.fires).float()
        values["dead_fraction"] = (fired_RF == 0).double().mean(dim=1)
    return values

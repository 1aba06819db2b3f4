"""Initialisation from a sample of activations: normalisation scale and decoder bias."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def expected_norm_scale(x_ND: Tensor) -> float:
    """The factor that makes the mean activation norm sqrt(D) (SAELens's `expected_average_only_in`
    convention), so one learning rate and coefficient fit every model and layer."""
    mean_norm = x_ND.float().norm(dim=1).mean().item()
    if not math.isfinite(mean_norm) or mean_norm == 0.0:
        raise ValueError(f"cannot normalise activations whose mean norm is {mean_norm}")
    return math.sqrt(x_ND.shape[1]) / mean_norm


@torch.no_grad()
def geometric_median(x_ND: Tensor, max_iter: int = 100, tol: float = 1e-6) -> Tensor:
    """The point minimising the sum of Euclidean distances to the rows (Weiszfeld's algorithm)."""
    x_ND = x_ND.double()
    median_D = x_ND.mean(dim=0)
    for _ in range(max_iter):
        distances_N = (x_ND - median_D).norm(dim=1).clamp_min(1e-12)
        weights_N = 1.0 / distances_N
        new_D = (weights_N[:, None] * x_ND).sum(dim=0) / weights_N.sum()
        moved = (new_D - median_D).norm()
        median_D = new_D
        if moved <= tol * median_D.norm().clamp_min(1e-12):
            break
    return median_D.float()


@torch.no_grad()
def initialize_unit(unit, sample: dict[str, Tensor], normalize: str, b_dec_init: str) -> None:
    """Set the unit's normalisation scales and its SAE's decoder bias from `sample`
    (`normalize` and `b_dec_init` as the settings `normalize_activations` and `b_dec_init`)."""
    x_ND = sample[unit.hook_in]
    target_ND = sample[unit.hook_out]
    if normalize == "expected_norm":
        unit.scale_in = expected_norm_scale(x_ND)
        unit.scale_out = expected_norm_scale(target_ND) if unit.hook_out != unit.hook_in else unit.scale_in
    target_ND = target_ND * unit.scale_out
    if b_dec_init == "mean":
        unit.sae.b_dec.copy_(target_ND.mean(dim=0))
    elif b_dec_init == "geometric_median":
        unit.sae.b_dec.copy_(geometric_median(target_ND))

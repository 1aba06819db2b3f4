"""Reconstruction and sparsity metrics as pure functions, plus an exact streaming accumulator.

Conventions (the same everywhere in saekit: training logs, `saekit eval`, dashboards):

- Rows are tokens: `x_BD` is the true activation, `x_hat_BD` the reconstruction, `feats_BF`
  the feature activations of the same B tokens.
- `l0`: mean over tokens of the number of non-zero features.
- `mse`: mean over tokens *and* dimensions of `(x_hat - x)**2` (`torch.nn.functional.mse_loss`'s
  default); the per-token squared error summed over dimensions is `mse * d`.
- `fvu` (fraction of variance unexplained) = sum of squared errors / sum of squared deviations
  of `x` from its mean over the tokens (a per-dimension mean), both summed over tokens and
  dimensions. `explained_variance = 1 - fvu`. Over many batches the mean is the mean of all
  tokens seen, so the streamed value equals the value on the concatenated batches.
- `cos_sim`: mean over tokens of the cosine similarity between `x_hat` and `x`.
- `l2_ratio` (shrinkage): mean over tokens of `||x_hat|| / ||x||`.
- Feature density: fraction of tokens on which a feature is non-zero.
  `log10_feature_density` adds `DENSITY_EPS = 1e-10` before the log10, so a never-firing
  feature shows as -10. Dead: density exactly 0 over the window. Dense: density above
  `DENSE_THRESHOLD = 0.1` (fires on more than one token in ten).
- `kl_div_score` (SAEBench's): `(KL_zero - KL_sae) / KL_zero`, each the mean over the counted
  tokens of KL(clean || variant), `KL_zero` with the hook zero-ablated. 1: the SAE keeps the
  clean next-token distribution; 0: no better than zeroing the activation.
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSITY_EPS = 1e-10
DENSE_THRESHOLD = 0.1
_NORM_EPS = 1e-12


def l0(feats_BF: Tensor) -> Tensor:
    """Mean number of non-zero features per token."""
    return (feats_BF != 0).sum(dim=-1).double().mean()


def mse(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Mean squared error over tokens and dimensions."""
    return (x_hat_BD.double() - x_BD.double()).pow(2).mean()


def fvu(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Fraction of variance unexplained: SSE / sum of squared deviations from the batch mean.

    In the inputs' dtype and differentiable: it is also the MSE part of every SAE loss
    (`saekit.saes`); pass float64 tensors for an exact metric, as `explained_variance` does.
    """
    sse = (x_hat_BD - x_BD).pow(2).sum()
    sst = (x_BD - x_BD.mean(dim=0)).pow(2).sum()
    return sse / sst.clamp_min(torch.finfo(sst.dtype).tiny)


def explained_variance(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """`1 - fvu(x, x_hat)`, in float64."""
    return 1 - fvu(x_BD.double(), x_hat_BD.double())


def cosine_similarity(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Mean over tokens of the cosine similarity between reconstruction and input."""
    return _cosines_B(x_BD, x_hat_BD).mean()


def l2_norm_ratio(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Mean over tokens of `||x_hat|| / ||x||` (below 1: the SAE shrinks its inputs)."""
    return _l2_ratios_B(x_BD, x_hat_BD).mean()


def firing_counts(feats_BF: Tensor) -> Tensor:
    """Number of tokens on which each feature is non-zero, as int64 `[F]`."""
    return (feats_BF != 0).sum(dim=0, dtype=torch.int64)


def feature_density(counts_F: Tensor, n_tokens: int) -> Tensor:
    """Fraction of `n_tokens` tokens on which each feature fired."""
    if n_tokens <= 0:
        raise ValueError(f"feature density needs at least one token, got n_tokens={n_tokens}")
    return counts_F.double() / n_tokens


def log10_feature_density(density_F: Tensor, eps: float = DENSITY_EPS) -> Tensor:
    """`log10(density + eps)`; dead features land at `log10(eps)` (-10 by default)."""
    return torch.log10(density_F.double() + eps)


def dead_fraction(density_F: Tensor) -> float:
    """Fraction of features that never fired."""
    return (density_F == 0).double().mean().item()


def dense_fraction(density_F: Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Fraction of features firing on more than `threshold` of the tokens."""
    return (density_F > threshold).double().mean().item()


def density_histogram(
    log10_density_F: Tensor, bins: int = 50, lo: float = -10.0, hi: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Counts `[bins]` and edges `[bins + 1]` of log10 feature densities on `[lo, hi]`.

    Values below `lo` (a smaller eps) are counted in the first bin.
    """
    values = log10_density_F.double().clamp(lo, hi)
    return torch.histogram(values, bins=bins, range=(lo, hi))


def kl_div_score(kl_sae: float, kl_zero_ablation: float) -> float:
    """SAEBench's normalised KL: `(KL_zero - KL_sae) / KL_zero` (NaN when `KL_zero` is 0)."""
    if kl_zero_ablation == 0:
        return float("nan")
    return (kl_zero_ablation - kl_sae) / kl_zero_ablation


def _cosines_B(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    return torch.nn.functional.cosine_similarity(x_hat_BD.double(), x_BD.double(), dim=-1)


def _l2_ratios_B(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    return x_hat_BD.double().norm(dim=-1) / x_BD.double().norm(dim=-1).clamp_min(_NORM_EPS)


class RunningStats:
    """Exact streaming version of the metrics above: keeps sums, never averages of averages.

    `update(x, x_hat, feats)` for every batch, then `compute()`; the result equals the pure
    functions applied to all batches concatenated (up to float64 rounding).
    """

    def __init__(self, d_sae: int | None = None) -> None:
        self.tokens = 0
        self._l0_sum = 0.0
        self._sse = 0.0
        self._cos_sum = 0.0
        self._ratio_sum = 0.0
        self._x_mean_D: Tensor | None = None  # running mean and sum of squared deviations
        self._m2 = 0.0  # (Chan et al.'s pairwise update, stable when the mean is large)
        self.counts_F: Tensor | None = (
            torch.zeros(d_sae, dtype=torch.int64) if d_sae is not None else None
        )

    @torch.no_grad()
    def update(self, x_BD: Tensor, x_hat_BD: Tensor, feats_BF: Tensor) -> None:
        """Add one batch of inputs (or transcoder targets), reconstructions and features."""
        if x_BD.shape != x_hat_BD.shape or x_BD.shape[0] != feats_BF.shape[0]:
            raise ValueError(
                f"mismatched shapes: x {tuple(x_BD.shape)}, x_hat {tuple(x_hat_BD.shape)}, "
                f"feats {tuple(feats_BF.shape)}"
            )
        x_BD = x_BD.detach().double().cpu()
        x_hat_BD = x_hat_BD.detach().double().cpu()
        counts_F = firing_counts(feats_BF.detach()).cpu()
        if self.counts_F is None:
            self.counts_F = torch.zeros_like(counts_F)
        if self._x_mean_D is None:
            self._x_mean_D = torch.zeros(x_BD.shape[1], dtype=torch.float64)
        n_old, n_new = self.tokens, x_BD.shape[0]
        mean_D = x_BD.mean(dim=0)
        delta_D = mean_D - self._x_mean_D
        self._m2 += (x_BD - mean_D).pow(2).sum().item()
        self._m2 += delta_D.pow(2).sum().item() * n_old * n_new / (n_old + n_new)
        self._x_mean_D += delta_D * (n_new / (n_old + n_new))
        self.tokens += n_new
        self.counts_F += counts_F
        self._l0_sum += counts_F.sum().item()
        self._sse += (x_hat_BD - x_BD).pow(2).sum().item()
        self._cos_sum += _cosines_B(x_BD, x_hat_BD).sum().item()
        self._ratio_sum += _l2_ratios_B(x_BD, x_hat_BD).sum().item()

    def merge(self, other: RunningStats) -> None:
        """Add everything `other` saw (e.g. another rank's tokens), as if updated with it."""
        if other.tokens == 0 or other._x_mean_D is None or other.counts_F is None:
            return
        if self.tokens == 0 or self._x_mean_D is None or self.counts_F is None:
            self.__dict__.update({k: (v.clone() if isinstance(v, Tensor) else v)
                                  for k, v in other.__dict__.items()})  # fmt: skip
            return
        n_old, n_new = self.tokens, other.tokens
        delta_D = other._x_mean_D - self._x_mean_D
        self._m2 += other._m2 + delta_D.pow(2).sum().item() * n_old * n_new / (n_old + n_new)
        self._x_mean_D += delta_D * (n_new / (n_old + n_new))
        self.tokens += n_new
        self.counts_F += other.counts_F
        self._l0_sum += other._l0_sum
        self._sse += other._sse
        self._cos_sum += other._cos_sum
        self._ratio_sum += other._ratio_sum

    @property
    def mean_D(self) -> Tensor:
        """Mean of `x` over all tokens seen (float64), e.g. for mean ablation."""
        if self._x_mean_D is None:
            raise ValueError("no batches were added")
        return self._x_mean_D.clone()

    def density_F(self) -> Tensor:
        """Feature density over all tokens seen."""
        if self.counts_F is None:
            raise ValueError("no batches were added")
        return feature_density(self.counts_F, self.tokens)

    def compute(self, dense_threshold: float = DENSE_THRESHOLD) -> dict[str, float]:
        """`l0, mse, fvu, explained_variance, cos_sim, l2_ratio, dead_fraction, dense_fraction,
        tokens` over everything added so far."""
        if self.tokens == 0 or self._x_mean_D is None:
            raise ValueError("no tokens were added")
        n, d = self.tokens, self._x_mean_D.numel()
        fvu_value = self._sse / self._m2 if self._m2 > 0 else float("nan")
        density_F = self.density_F()
        return {
            "l0": self._l0_sum / n,
            "mse": self._sse / (n * d),
            "fvu": fvu_value,
            "explained_variance": 1 - fvu_value,
            "cos_sim": self._cos_sum / n,
            "l2_ratio": self._ratio_sum / n,
            "dead_fraction": dead_fraction(density_F),
            "dense_fraction": dense_fraction(density_F, dense_threshold),
            "tokens": n,
        }

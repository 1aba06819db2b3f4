"""Ground truth on synthetic data: activations made of known sparse features.

`SyntheticActivations` draws `x = c @ D + noise` from a random dictionary `D [F, d]` (unit
rows) and sparse coefficients `c`: feature i fires with probability `p_i` following a
power law over features (a few common, many rare; `mean_active` on average per sample),
firings are correlated through a Gaussian copula with a low-rank factor structure
(`correlation` is the share of each latent's variance that is shared), and active
coefficients are log-normal. An SAE trained on these batches (by `saekit`'s trainer, which
takes any iterator of `{hook: Tensor}`, or by `train_on_synthetic`) is scored by
`recovery_metrics`: how well its decoder rows find the true directions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

SYNTHETIC_HOOK = "synthetic"


@dataclass(frozen=True)
class SyntheticConfig:
    """How the synthetic activations are made."""

    d_model: int = 64
    n_features: int = 256
    mean_active: float = 5.0
    """Expected number of active features per sample."""
    frequency_exponent: float = 0.7
    """Firing probability of the i-th feature is proportional to (i + 1) ** -exponent."""
    correlation: float = 0.3
    """Share of each feature's latent variance that comes from the shared factors (0..1)."""
    n_factors: int = 8
    magnitude_sigma: float = 0.5
    """Active coefficients are exp(N(0, sigma^2))."""
    noise_std: float = 0.02
    seed: int = 0


class SyntheticActivations:
    """A fixed random dictionary and sampler of sparse, correlated feature coefficients."""

    def __init__(self, cfg: SyntheticConfig = SyntheticConfig()) -> None:
        if not 0 <= cfg.correlation < 1:
            raise ValueError(f"correlation must be in [0, 1), got {cfg.correlation}")
        if not 0 < cfg.mean_active < cfg.n_features:
            raise ValueError(f"mean_active must be in (0, n_features), got {cfg.mean_active}")
        self.cfg = cfg
        gen = torch.Generator().manual_seed(7_919 * cfg.seed + 104_729)  # not a common seed
        dictionary_FD = torch.randn(cfg.n_features, cfg.d_model, generator=gen)
        self.dictionary_FD = dictionary_FD / dictionary_FD.norm(dim=1, keepdim=True)
        rank_F = torch.arange(1, cfg.n_features + 1, dtype=torch.float64)
        weights_F = rank_F**-cfg.frequency_exponent
        self.probs_F = (weights_F * cfg.mean_active / weights_F.sum()).clamp(max=1.0).float()
        loadings_FR = torch.randn(cfg.n_features, cfg.n_factors, generator=gen)
        self.loadings_FR = loadings_FR / loadings_FR.norm(dim=1, keepdim=True)
        normal = torch.distributions.Normal(0.0, 1.0)
        self.thresholds_F = normal.icdf((1 - self.probs_F).clamp(1e-7, 1 - 1e-7))

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """`(x [n, d], coefficients [n, F])`; each feature fires with probability `p_i`."""
        cfg = self.cfg
        shared_NR = torch.randn(n, cfg.n_factors, generator=generator)
        own_NF = torch.randn(n, cfg.n_features, generator=generator)
        latent_NF = (cfg.correlation**0.5) * shared_NR @ self.loadings_FR.T
        latent_NF += ((1 - cfg.correlation) ** 0.5) * own_NF
        active_NF = latent_NF > self.thresholds_F
        magnitude_NF = torch.exp(
            cfg.magnitude_sigma * torch.randn(n, cfg.n_features, generator=generator)
        )
        coeffs_NF = active_NF * magnitude_NF
        noise_ND = cfg.noise_std * torch.randn(n, cfg.d_model, generator=generator)
        return coeffs_NF @ self.dictionary_FD + noise_ND, coeffs_NF

    def batches(
        self, batch_size: int, seed: int = 1, hook: str = SYNTHETIC_HOOK
    ) -> Iterator[dict[str, Tensor]]:
        """An endless stream of `{hook: x [batch_size, d]}`, the trainer's batch format."""
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield {hook: self.sample(batch_size, generator)[0]}


def max_cosines(true_FD: Tensor, learned_SD: Tensor) -> Tensor:
    """For each true direction, the largest cosine similarity with any learned direction."""
    true_FD = true_FD.double() / true_FD.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    learned_SD = learned_SD.double() / learned_SD.double().norm(dim=1, keepdim=True).clamp_min(
        1e-12
    )
    return (true_FD @ learned_SD.T).max(dim=1).values


def duplicate_fraction(learned_SD: Tensor, alive_S: Tensor, threshold: float = 0.9) -> float:
    """Fraction of live latents whose decoder direction has cos > `threshold` with an earlier live one."""
    rows_SD = learned_SD[alive_S].double()
    if len(rows_SD) < 2:
        return 0.0
    rows_SD = rows_SD / rows_SD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos_SS = torch.tril(rows_SD @ rows_SD.T, diagonal=-1)
    return float((cos_SS > threshold).any(dim=1).double().mean())


@torch.no_grad()
def recovery_metrics(
    sae, data: SyntheticActivations, *, n_eval: int = 8192, threshold: float = 0.9, seed: int = 123
) -> dict[str, Any]:
    """How well the SAE's decoder rows recover the true dictionary.

    `mean_max_cosine`: mean over true features of the best cosine with a decoder row;
    `fraction_recovered`: share of true features whose best cosine exceeds `threshold`;
    `dead_fraction`: latents that never fire on `n_eval` fresh samples; `duplicate_fraction`:
    live latents that nearly copy another (cos > `threshold`); plus L0 and explained variance.
    """
    best_F = max_cosines(data.dictionary_FD, sae.W_dec.detach().cpu())
    x_ND, _ = data.sample(n_eval, torch.Generator().manual_seed(seed))
    param = next(sae.parameters())
    out = sae(x_ND.to(param.device, param.dtype))
    feats_NS = out.feature_acts.float().cpu()
    alive_S = (feats_NS != 0).any(dim=0)
    x_hat = out.sae_out.double().cpu()
    fvu = ((x_hat - x_ND.double()) ** 2).sum() / (
        (x_ND.double() - x_ND.double().mean(0)) ** 2
    ).sum()
    return {
        "mean_max_cosine": float(best_F.mean()),
        "fraction_recovered": float((best_F > threshold).double().mean()),
        "recovery_threshold": threshold,
        "dead_fraction": float((~alive_S).double().mean()),
        "duplicate_fraction": duplicate_fraction(
            sae.W_dec.detach().cpu(), alive_S.cpu(), threshold
        ),
        "l0": float((feats_NS != 0).sum(dim=1).double().mean()),
        "true_l0": float(data.probs_F.sum()),
        "explained_variance": float(1 - fvu),
    }


def train_on_synthetic(
    sae, data: SyntheticActivations, *, steps: int = 2000, batch_size: int = 512,
    lr: float = 3e-3, seed: int = 1,
) -> Any:  # fmt: skip
    """A plain Adam loop over fresh synthetic batches (the SAE's own loss and constraints)."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    param = next(sae.parameters())
    batches = data.batches(batch_size, seed=seed)
    sae.train()
    for _ in range(steps):
        x_BD = next(batches)[SYNTHETIC_HOOK].to(param.device, param.dtype)
        loss = sae(x_BD).loss
        optimizer.zero_grad()
        loss.backward()
        sae.before_optimizer_step()
        optimizer.step()
        sae.after_optimizer_step()
    return sae.eval()

"""Feature firing statistics and Anthropic-style resampling of dead features."""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.evals.metrics import firing_counts


class FiringStats:
    """Tracks, per feature, tokens since it last fired and how often it fired in a window.

    `dead_mask()` marks features silent for at least `dead_after_tokens` tokens.
    Window counts (reset by `reset_window`) give the feature density of the window.
    """

    def __init__(self, d_sae: int, dead_after_tokens: int, device: torch.device | str = "cpu"):
        self.dead_after_tokens = dead_after_tokens
        self.tokens_since_fired_F = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.window_counts_F = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.window_tokens = 0

    @torch.no_grad()
    def update(self, feature_acts_BF: Tensor) -> None:
        """Count the firings of one batch of feature activations."""
        self.add_counts(firing_counts(feature_acts_BF), feature_acts_BF.shape[0])

    @torch.no_grad()
    def add_counts(self, fired_F: Tensor, n_tokens: int) -> None:
        """Count `n_tokens` tokens on which feature i fired `fired_F[i]` times."""
        self.window_counts_F += fired_F
        self.window_tokens += n_tokens
        self.tokens_since_fired_F += n_tokens
        self.tokens_since_fired_F[fired_F > 0] = 0

    def dead_mask(self) -> Tensor:
        """Bool [d_sae]: features that have not fired for `dead_after_tokens` tokens."""
        return self.tokens_since_fired_F >= self.dead_after_tokens

    def window_density(self) -> Tensor:
        """Float [d_sae]: fraction of the window's tokens on which each feature fired."""
        return self.window_counts_F.float() / max(1, self.window_tokens)

    def reset_window(self) -> None:
        """Start a new density window (dead tracking is unaffected)."""
        self.window_counts_F.zero_()
        self.window_tokens = 0

    def state_dict(self) -> dict:
        return {
            "tokens_since_fired": self.tokens_since_fired_F.clone(),
            "window_counts": self.window_counts_F.clone(),
            "window_tokens": self.window_tokens,
        }

    def load_state_dict(self, state: dict) -> None:
        self.tokens_since_fired_F.copy_(state["tokens_since_fired"])
        self.window_counts_F.copy_(state["window_counts"])
        self.window_tokens = int(state["window_tokens"])


def dead_feature_method(setting: str, architecture: str) -> str:
    """The dead-feature method for an SAE: `setting`, or on auto the architecture's default.

    ValueError when the architecture has no such method, naming the ones that have it.
    """
    from saekit.saes import SAE_CLASSES, get_sae_class

    cls = get_sae_class(architecture)
    method = cls.default_dead_feature_method if setting == "auto" else setting
    if method not in cls.dead_feature_methods():
        having = [a for a, c in SAE_CLASSES.items() if method in c.dead_feature_methods()]
        raise ValueError(
            f"dead_feature_method={method} needs a {' or '.join(having)} SAE, not "
            f"{architecture} (which takes {', '.join(cls.dead_feature_methods())})"
        )
    return method


@torch.no_grad()
def resample_dead_features(
    sae: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    dead_mask_F: Tensor,
    x_ND: Tensor,
    target_ND: Tensor,
    generator: torch.Generator,
    encoder_scale: float = 0.2,
    is_transcoder: bool = False,
) -> int:
    """Anthropic's resampling (Towards Monosemanticity, 2023): re-initialise dead features.

    Inputs are drawn with probability proportional to their squared reconstruction loss;
    each dead feature's decoder row becomes the unit-norm residual direction of one drawn
    input, its encoder column that direction scaled to `encoder_scale` times the mean
    encoder norm of live features, its encoder bias zero; Adam's moments for those
    entries are reset. Returns the number of features resampled.
    """
    dead_idx = dead_mask_F.nonzero().squeeze(1)
    if dead_idx.numel() == 0:
        return 0
    residual_ND = target_ND - sae(x_ND).sae_out
    loss_N = residual_ND.pow(2).sum(dim=1)
    if loss_N.sum() <= 0:
        return 0
    picks = torch.multinomial(
        loss_N.cpu(), dead_idx.numel(), replacement=True, generator=generator
    ).to(x_ND.device)
    directions_KD = residual_ND[picks]
    directions_KD = directions_KD / directions_KD.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive = ~dead_mask_F
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[dead_idx] = directions_KD
    if not is_transcoder:
        sae.W_enc[:, dead_idx] = (directions_KD * enc_norm * encoder_scale).T
    else:  # transcoder: the input space differs from the residual's; use drawn inputs
        inputs_KD = x_ND[picks] / x_ND[picks].norm(dim=1, keepdim=True).clamp_min(1e-8)
        sae.W_enc[:, dead_idx] = (inputs_KD * enc_norm * encoder_scale).T
    sae.b_enc[dead_idx] = 0.0
    _reset_adam_entries(optimizer, sae.W_enc, (slice(None), dead_idx))
    _reset_adam_entries(optimizer, sae.W_dec, (dead_idx,))
    _reset_adam_entries(optimizer, sae.b_enc, (dead_idx,))
    return int(dead_idx.numel())


def _reset_adam_entries(optimizer: torch.optim.Optimizer, param: Tensor, index: tuple) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][index] = 0.0

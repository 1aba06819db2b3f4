"""`SparseAutoencoder`: the original SAE, which is saekit's `relu` architecture in its
original form (b_dec subtracted from the input, unit-norm decoder rows, L1 penalty).

Its forward returns the original `ForwardOutput` names: `sae_out, feature_acts, loss,
mse_loss, l1_loss, ghost_grad_loss`; inputs may have any leading dims (`[batch, pos, d_in]`
gives `[batch, pos, d_sae]` features). `mse_loss` is saekit's (fraction of variance
unexplained), not the original's norm-scaled squared error.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from torch import Tensor

from saekit.compat.legacy_config import LanguageModelSAERunnerConfig, LegacySAEConfig
from saekit.io.load import load_sae
from saekit.saes import SAE
from saekit.saes.config import SAEConfig, SAEMetadata
from saekit.saes.relu import ReLUSAE


class ForwardOutput(NamedTuple):
    """The original forward's six values (loss parts are scalars)."""

    sae_out: Tensor
    feature_acts: Tensor
    loss: Tensor
    mse_loss: Tensor
    l1_loss: Tensor
    ghost_grad_loss: Tensor


class SparseAutoencoder(ReLUSAE):
    """The original SAE class over saekit's ReLU SAE; `cfg` answers to both sets of names."""

    def __init__(self, cfg: LanguageModelSAERunnerConfig | SAEConfig) -> None:
        if isinstance(cfg, LanguageModelSAERunnerConfig):
            meta = SAEMetadata(
                model_name=cfg.model_name, hook_name=cfg.hook_points()[0],
                dataset_path=cfg.dataset_path, context_size=cfg.context_size,
                prepend_bos=cfg.prepend_bos,
            )  # fmt: skip
            cfg = SAEConfig(
                architecture="relu", d_in=cfg.d_in, d_sae=int(cfg.d_sae or cfg.d_in * 4),
                device=cfg.device, l1_coefficient=float(cfg.l1_coefficient), metadata=meta,
            )  # fmt: skip
        super().__init__(LegacySAEConfig.of(cfg))

    @classmethod
    def from_sae(cls, sae: SAE) -> SparseAutoencoder:
        """The same weights and config as a `SparseAutoencoder` (ReLU SAEs only)."""
        if sae.cfg.architecture != "relu":
            raise ValueError(f"a SparseAutoencoder is a relu SAE, not {sae.cfg.architecture!r}")
        new = cls(sae.cfg).to(sae.W_enc.device)
        new.load_state_dict(sae.state_dict())
        return new.train(sae.training)

    @classmethod
    def load_from_pretrained(cls, path: str, device: str = "cpu") -> SparseAutoencoder:
        """Load an original `.pt` file, a saekit/SAELens folder or a hub path."""
        return cls.from_sae(load_sae(path, device=device))

    def save_model(self, path: str | os.PathLike[str]) -> None:
        """Save as a saekit folder (`cfg.json` + safetensors; a `.pt` suffix is dropped)."""
        path = os.fspath(path)
        self.save(path[:-3] if path.endswith(".pt") else path)

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def l1_coefficient(self) -> float:
        return self.cfg.l1_coefficient

    @property
    def lp_norm(self) -> float:
        return 1.0

    def forward(  # type: ignore[override]
        self, x: Tensor, dead_neuron_mask: Tensor | None = None, **kwargs
    ) -> ForwardOutput:
        """Encode and decode `x` (`[..., d_in]`); ghost grads when training with a dead mask."""
        use_mask = self.training and self.cfg.use_ghost_grads and dead_neuron_mask is not None
        kwargs.setdefault("dead_mask", dead_neuron_mask if use_mask else None)
        return ForwardOutput(*super().forward(x, **kwargs))

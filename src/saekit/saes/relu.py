"""`relu`: the standard ReLU SAE with an L1 penalty (Bricken et al. 2023).

`decoder_norm="unit"`: the original form, decoder rows kept at unit norm, penalty
`sum_i f_i`. `decoder_norm="weighted"`: Anthropic's April 2024 form, unconstrained decoder,
penalty `sum_i f_i * ||W_dec[i]||`. Both average the penalty over the batch. Dead features
are revived with ghost grads (Anthropic, Jan 2024) when the trainer passes `dead_mask`.
On CPU, batches whose activations are sparse train on the sparse kernels (`saes/sparse.py`).
"""

from __future__ import annotations

from torch import Tensor

from saekit.evals.metrics import fvu
from saekit.saes.base import SAE
from saekit.saes.pairs import Acts, SparseCode, code_from_mask
from saekit.saes.registry import register
from saekit.saes.sparse import SPARSE_MAX_DENSITY, SparseMixin


@register
class ReLUSAE(SparseMixin, SAE):
    architecture = "relu"
    sparsity_setting = "l1_coefficient"
    dead_feature_loss = "ghost_grads"
    resamplable = True

    @property
    def unit_norm_decoder(self) -> bool:
        return self.cfg.decoder_norm == "unit"

    def encode_parts(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        pre_BF = self.sae_in(x_BD) @ self.W_enc + self.b_enc
        return pre_BF, pre_BF.relu()

    def select_pairs(self, pre_BF: Tensor) -> SparseCode | None:
        """The positive pre-activations; None (run dense) when more than
        `SPARSE_MAX_DENSITY` of them are positive."""
        code = code_from_mask(pre_BF > 0)
        return None if code.cols.numel() > SPARSE_MAX_DENSITY * pre_BF.numel() else code

    def sparsity_penalty(self, pre_BF: Tensor | None, acts: Acts) -> Tensor:
        """L1 of the activations (times the decoder row norms when weighted), batch mean."""
        weights_F = self.W_dec.norm(dim=1) if self.cfg.decoder_norm == "weighted" else None
        return acts.weighted_sum(weights_F) / acts.n_tokens

    def aux_loss(self, x_BD, target_BO, pre_BF, f_BF, sae_out_BO, mse, dead_mask_F):
        """Ghost grads: dead features, activated by exp(pre), fit the residual.

        Their output is rescaled (scale detached) to half the residual's norm; the
        resulting FVU is rescaled to equal `mse` in value, so only its gradient matters.
        """
        if dead_mask_F is None or not bool(dead_mask_F.any()):
            return None
        residual_BO = (target_BO - sae_out_BO).detach()
        ghost_BO = pre_BF[:, dead_mask_F].exp() @ self.W_dec[dead_mask_F]
        norm_ratio_B1 = residual_BO.norm(dim=-1, keepdim=True) / (
            2 * ghost_BO.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        )
        ghost_mse = fvu(residual_BO, ghost_BO * norm_ratio_B1.detach())
        return ghost_mse * (mse / ghost_mse.clamp_min(1e-12)).detach()

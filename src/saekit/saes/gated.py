"""`gated`: Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated SAEs").

A gate decides which features fire, a magnitude path (sharing W_enc, rescaled per
feature by exp(r_mag)) decides how strongly:

    pi_gate = (x - b_dec) @ W_enc + b_gate
    pi_mag  = (x - b_dec) @ (W_enc * exp(r_mag)) + b_mag
    f       = H(pi_gate) * relu(pi_mag)

Loss: FVU of the reconstruction + l1_coefficient * mean sum_i relu(pi_gate_i) * ||W_dec[i]||
+ aux_loss: the FVU of `relu(pi_gate) @ W_dec + b_dec` with the decoder frozen (detached),
which trains the gate path to reconstruct. Decoder rows are kept unit-norm. Tensors
follow SAELens: W_enc, b_gate, b_mag, r_mag, W_dec, b_dec (no b_enc).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saekit.evals.metrics import fvu
from saekit.saes.base import SAE
from saekit.saes.pairs import DenseActs
from saekit.saes.registry import register


@register
class GatedSAE(SAE):
    architecture = "gated"
    sparsity_setting = "l1_coefficient"

    def init_extra(self, kw) -> None:
        d_sae = self.cfg.d_sae
        self.b_gate = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_mag = nn.Parameter(torch.zeros(d_sae, **kw))
        self.r_mag = nn.Parameter(torch.zeros(d_sae, **kw))

    def encode_parts(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, f): the gate's pre-activation drives the sparsity and aux losses."""
        x_BD = self.sae_in(x_BD)
        pi_gate_BF = x_BD @ self.W_enc + self.b_gate
        pi_mag_BF = x_BD @ (self.W_enc * self.r_mag.exp()) + self.b_mag
        return pi_gate_BF, (pi_gate_BF > 0) * pi_mag_BF.relu()

    def sparsity_penalty(self, pre_BF: Tensor, acts: DenseActs) -> Tensor:
        return (pre_BF.relu() * self.W_dec.norm(dim=1)).sum(-1).mean()

    def aux_loss(self, x_BD, target_BO, pre_BF, f_BF, sae_out_BO, mse, dead_mask_F):
        return fvu(target_BO, pre_BF.relu() @ self.W_dec.detach() + self.b_dec.detach())

"""`matryoshka`: BatchTopK with nested dictionaries (Bussmann et al. 2025).

`prefixes=[m1, m2, ...]` (strictly increasing; d_sae is appended when missing) name
nested dictionaries: the first m features alone must reconstruct the target too. The
MSE part is the sum over prefixes of the FVU of `f[:, :m] @ W_dec[:m] + b_dec`; the
activations, threshold and AuxK are those of `batchtopk`.
"""

from __future__ import annotations

from torch import Tensor

from saekit.saes.base import fvu
from saekit.saes.batchtopk import BatchTopKSAE
from saekit.saes.registry import register


@register
class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"

    def reconstruction_loss(self, f_BF: Tensor, sae_out_BO: Tensor, target_BO: Tensor) -> Tensor:
        partial_BO = self.b_dec.expand_as(target_BO)
        loss, start = sae_out_BO.new_zeros(()), 0
        for end in self.cfg.prefixes:
            partial_BO = partial_BO + f_BF[:, start:end] @ self.W_dec[start:end]
            loss = loss + fvu(partial_BO, target_BO)
            start = end
        return loss

"""`matryoshka`: BatchTopK with nested dictionaries (Bussmann et al. 2025).

`prefixes=[m1, m2, ...]` (strictly increasing; d_sae is appended when missing) name
nested dictionaries: the first m features alone must reconstruct the target too. The
MSE part is the sum over prefixes of the FVU of `f[:, :m] @ W_dec[:m] + b_dec`; the
activations, threshold and AuxK are those of `batchtopk`. Without `prefixes`, a sweep
uses d_sae/8, d_sae/4, d_sae/2, d_sae (`size_defaults`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from saekit.evals.metrics import fvu
from saekit.saes.batchtopk import BatchTopKSAE
from saekit.saes.pairs import Acts
from saekit.saes.registry import register


@register
class MatryoshkaSAE(BatchTopKSAE):
    architecture = "matryoshka"

    @classmethod
    def size_defaults(cls, d_sae: int) -> dict[str, Any]:
        sizes = {max(1, d_sae // 8), max(1, d_sae // 4), max(1, d_sae // 2), d_sae}
        return {"prefixes": sorted(sizes)}

    def reconstruction_loss(self, acts: Acts, sae_out_BO: Tensor, target_BO: Tensor) -> Tensor:
        """Sum over prefixes m of the FVU of the first m features' reconstruction."""
        partial_BO = self.b_dec.expand_as(target_BO)
        loss, start = sae_out_BO.new_zeros(()), 0
        for end in self.cfg.prefixes:
            partial_BO = partial_BO + acts.decode(self.W_dec, start, end)
            loss = loss + fvu(target_BO, partial_BO)
            start = end
        return loss

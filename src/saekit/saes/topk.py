"""`topk`: keep each token's k largest (ReLU'd) pre-activations (Gao et al. 2024).

No sparsity penalty; dead features are revived with AuxK when `dead_mask` is given.
`rescale_acts_by_decoder_norm` (a SAELens key, False for SAEs saekit trains) ranks and
returns `pre * ||W_dec[i]||` and decodes with `f / ||W_dec[i]||`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.saes.base import SAE, auxk_loss
from saekit.saes.pairs import SparseCode, code_from_topk
from saekit.saes.registry import register
from saekit.saes.sparse import SparseMixin


def topk_per_row(pre_BF: Tensor, k: int) -> Tensor:
    """Zero all but each row's k largest entries, then ReLU."""
    vals, idx = pre_BF.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre_BF).scatter(-1, idx, vals.relu())


class KSparseSAE(SparseMixin, SAE):
    """What the TopK family (topk, batchtopk, matryoshka) shares: k sets the sparsity,
    AuxK revives dead features, and the sparse path may choose pairs in bfloat16."""

    sparsity_setting = "k"
    dead_feature_loss = "auxk"
    default_dead_feature_method = "auxk"
    approximate_selection = True

    def aux_loss(self, x_BD, target_BO, pre_BF, f_BF, sae_out_BO, mse, dead_mask_F):
        residual_BO = (target_BO - sae_out_BO).detach()
        return auxk_loss(self, pre_BF, dead_mask_F, residual_BO, lambda c: pre_BF[c.rows, c.cols])


@register
class TopKSAE(KSparseSAE):
    architecture = "topk"

    def encode_parts(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        pre_BF = self.sae_in(x_BD) @ self.W_enc + self.b_enc
        if self.cfg.rescale_acts_by_decoder_norm:
            pre_BF = pre_BF * self.W_dec.norm(dim=1)
        return pre_BF, topk_per_row(pre_BF, self.cfg.k)

    def select_pairs(self, pre_BF: Tensor) -> SparseCode:
        """Each token's k largest pre-activations."""
        return code_from_topk(pre_BF.topk(self.cfg.k, dim=-1, sorted=False).indices)

    def sparse_supported(self) -> bool:
        return not self.cfg.rescale_acts_by_decoder_norm

    def decode(self, f_BF: Tensor) -> Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            f_BF = f_BF / self.W_dec.norm(dim=1)
        return f_BF @ self.W_dec + self.b_dec

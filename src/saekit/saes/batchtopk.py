"""`batchtopk`: BatchTopK SAE (Bussmann et al. 2024).

Training: keep the k * B largest (ReLU'd) pre-activations over the whole batch, so the
average L0 is k but tokens share the budget. Each training forward also moves the
inference `threshold` (a buffer [d_sae], one shared value) towards the batch's smallest
kept activation: `threshold <- (1 - threshold_lr) * threshold + threshold_lr * min`.
Eval (`sae.eval()`, what `SAE.load` returns): a JumpReLU with that threshold,
`f = relu(pre) * (pre > threshold)`, independent of the batch. SAELens reads the saved
folder as its `jumprelu` architecture.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.saes.base import SAE, auxk_loss
from saekit.saes.registry import register
from saekit.saes.sparse import SparseMixin


def batch_topk(pre_BF: Tensor, k: int) -> Tensor:
    """Keep the k * B largest entries of relu(pre) over the whole batch, zero the rest."""
    flat = pre_BF.relu().flatten()
    vals, idx = flat.topk(min(k * pre_BF.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre_BF)


@register
class BatchTopKSAE(SparseMixin, SAE):
    architecture = "batchtopk"
    dead_feature_loss = "auxk"
    threshold: Tensor

    def init_extra(self, kw) -> None:
        super().init_extra(kw)
        self.register_buffer("threshold", torch.zeros(self.cfg.d_sae, **kw))

    def encode_parts(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        pre_BF = self.sae_in(x_BD) @ self.W_enc + self.b_enc
        if not self.training:
            return pre_BF, pre_BF.relu() * (pre_BF > self.threshold)
        f_BF = batch_topk(pre_BF, self.cfg.k)
        self._update_threshold(f_BF)
        return pre_BF, f_BF

    @torch.no_grad()
    def _update_threshold(self, f_BF: Tensor) -> None:
        active = f_BF[f_BF > 0]
        if active.numel():
            lr = self.cfg.threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * active.min().to(self.threshold.dtype))

    def aux_loss(self, x_BD, target_BO, pre_BF, f_BF, sae_out_BO, mse, dead_mask_F):
        return auxk_loss(self, pre_BF, target_BO, sae_out_BO, dead_mask_F)

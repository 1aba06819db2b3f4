"""`batchtopk`: BatchTopK SAE (Bussmann et al. 2024).

Training (`sae.train()`): keep the k * B largest (ReLU'd) pre-activations over the whole
batch, so the average L0 is k but tokens share the budget. Each training forward also moves
the inference `threshold` (a buffer [d_sae], one shared value) towards the batch's smallest
kept activation: `threshold <- (1 - threshold_lr) * threshold + threshold_lr * min`.
Eval (`sae.eval()`, what `SAE.create` and `SAE.load` return): a JumpReLU with that
threshold, `f = relu(pre) * (pre > threshold)`, independent of the batch. SAELens reads the
saved folder as its `jumprelu` architecture.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.saes.pairs import SparseCode, code_from_flat
from saekit.saes.registry import register
from saekit.saes.topk import KSparseSAE


def batch_topk(pre_BF: Tensor, k: int) -> Tensor:
    """Keep the k * B largest entries of relu(pre) over the whole batch, zero the rest."""
    flat = pre_BF.relu().flatten()
    vals, idx = flat.topk(min(k * pre_BF.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(pre_BF)


@register
class BatchTopKSAE(KSparseSAE):
    architecture = "batchtopk"
    batch_dependent = True
    threshold: Tensor

    def init_extra(self, kw) -> None:
        super().init_extra(kw)
        self.register_buffer("threshold", torch.zeros(self.cfg.d_sae, **kw))

    def encode_parts(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        pre_BF = self.sae_in(x_BD) @ self.W_enc + self.b_enc
        if not self.training:
            return pre_BF, pre_BF.relu() * (pre_BF > self.threshold)
        f_BF = batch_topk(pre_BF, self.cfg.k)
        self.observe_selection(f_BF)
        return pre_BF, f_BF

    def select_pairs(self, pre_BF: Tensor) -> SparseCode:
        """The k * B largest pre-activations of the batch."""
        flat = pre_BF.flatten()
        n = min(self.cfg.k * pre_BF.shape[0], flat.numel())
        return code_from_flat(flat.topk(n, sorted=False).indices, *pre_BF.shape)

    def sparse_supported(self) -> bool:
        return self.training  # eval: a JumpReLU, computed densely

    @torch.no_grad()
    def observe_selection(self, vals: Tensor) -> None:
        """Training: move the threshold towards the smallest kept (positive) activation."""
        active = vals[vals > 0]
        if self.training and active.numel():
            lr = self.cfg.threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * active.min().to(self.threshold.dtype))

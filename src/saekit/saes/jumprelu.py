"""`jumprelu`: JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope).

`f = relu(pre) * H(pre - threshold)` with a learned per-feature `threshold` (a parameter in
linear units, clamped at >= 0 after each step; stored directly so folders round-trip
bit-for-bit with SAELens; the ReLU only matters for a negative threshold from elsewhere).
H has no useful gradient, so training uses straight-through estimators with a rectangle
kernel K(u) = 1[|u| < 1/2] and width `bandwidth` (eps):

- JumpReLU: d f / d pre = H(pre - t);  d f / d t = -(t / eps) K((pre - t) / eps)
- step H:   d H / d pre = 0;            d H / d t = -(1 / eps) K((pre - t) / eps)

Sparsity penalty (times `l0_coefficient`), averaged over the batch:
- `sparsity_mode="step"` (Gemma Scope): L0 = sum_i H(pre_i - t_i); decoder rows unit-norm.
- `sparsity_mode="tanh"` (Anthropic, early 2025): sum_i tanh(tanh_scale * f_i * ||W_dec[i]||);
  decoder unconstrained. The gradient reaches t through the JumpReLU estimator.

`JumpReLUFn`, `tanh_penalty` and `pre_act_penalty` broadcast over extra feature dims: the
cross-layer transcoder (`saekit.saes.clt`, activation jumprelu) applies them to [B, L, F] with
thresholds and decoder norms [L, F].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saekit.saes.base import SAE
from saekit.saes.pairs import DenseActs
from saekit.saes.registry import register


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """relu(pre) * H(pre - t) with the straight-through estimator above.

    The ReLU matters only for a negative threshold (possible in files from elsewhere; the
    trainer clamps t at 0): SAELens and Gemma Scope zero negative pre-activations there too,
    and a jump of height relu(t) = 0 gives t no gradient.
    """

    @staticmethod
    def forward(ctx, pre_BF: Tensor, t_F: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre_BF, t_F)
        ctx.eps = eps
        return pre_BF * ((pre_BF > t_F) & (pre_BF > 0))

    @staticmethod
    def backward(ctx, grad_BF: Tensor):
        pre_BF, t_F = ctx.saved_tensors
        jump_F = t_F.clamp_min(0)
        grad_t = -(jump_F / ctx.eps) * _rectangle((pre_BF - t_F) / ctx.eps) * grad_BF
        return ((pre_BF > t_F) & (pre_BF > 0)) * grad_BF, grad_t.sum(0), None


def tanh_penalty(f_BF: Tensor, dec_norm_F: Tensor, scale: float) -> Tensor:
    """sum over features of tanh(scale * f * ||W_dec||), averaged over the batch (dim 0)."""
    return torch.tanh(scale * f_BF * dec_norm_F).flatten(1).sum(1).mean()


def pre_act_penalty(pre_BF: Tensor, dec_norm_F: Tensor) -> Tensor:
    """sum over features of relu(-pre) * ||W_dec||, averaged over the batch: pushes features
    whose pre-activations sit below zero back up (against dead features)."""
    return (torch.relu(-pre_BF) * dec_norm_F).flatten(1).sum(1).mean()


class StepFn(torch.autograd.Function):
    """H(pre - t) with the straight-through estimator above."""

    @staticmethod
    def forward(ctx, pre_BF: Tensor, t_F: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre_BF, t_F)
        ctx.eps = eps
        return (pre_BF > t_F).to(pre_BF.dtype)

    @staticmethod
    def backward(ctx, grad_BF: Tensor):
        pre_BF, t_F = ctx.saved_tensors
        grad_t = -(1.0 / ctx.eps) * _rectangle((pre_BF - t_F) / ctx.eps) * grad_BF
        return torch.zeros_like(pre_BF), grad_t.sum(0), None


@register
class JumpReLUSAE(SAE):
    architecture = "jumprelu"
    sparsity_setting = "l0_coefficient"
    threshold: nn.Parameter

    def init_extra(self, kw) -> None:
        super().init_extra(kw)
        self.threshold = nn.Parameter(torch.full((self.cfg.d_sae,), self.cfg.init_threshold, **kw))

    @property
    def unit_norm_decoder(self) -> bool:
        return self.cfg.sparsity_mode == "step"

    def encode_parts(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        pre_BF = self.sae_in(x_BD) @ self.W_enc + self.b_enc
        return pre_BF, JumpReLUFn.apply(pre_BF, self.threshold, self.cfg.bandwidth)

    def sparsity_penalty(self, pre_BF: Tensor, acts: DenseActs) -> Tensor:
        if self.cfg.sparsity_mode == "step":
            return StepFn.apply(pre_BF, self.threshold, self.cfg.bandwidth).sum(-1).mean()
        return tanh_penalty(acts.f_BF, self.W_dec.norm(dim=1), self.cfg.tanh_scale)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        self.threshold.clamp_(min=0.0)

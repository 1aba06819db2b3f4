"""The sparse forward of TopK-family (topk, batchtopk, matryoshka) and ReLU SAEs.

A k-sparse SAE only needs the encoder's dense matmul to *choose* the active features; every
other product touches just the chosen (token, feature) pairs. A ReLU SAE whose activations
are sparse is the same case: the ReLU's gradient is zero off its active pairs, so with the
pairs where the pre-activation is positive the same kernels give its exact forward, its
L1 penalty and every gradient. The dense path in `base.py` spends about five times the work
of that one matmul: the dense decode, the dense gradient of the pre-activations, and the
dense W_enc and W_dec gradients. Here the active pairs are kept as a `SparseCode` (see
`pairs.py`, which also has `SparseDecode`) and `GatherPre` gives their pre-activations:
forward gathers them from the dense pre-activations computed without a graph (or recomputes
them exactly when that product was bfloat16); backward gives the W_enc gradient as a
sparse-dense product, b_enc's as an index-add and b_dec's as one matrix-vector product.

Each architecture owns its selection step (`SparseMixin.select_pairs`); the losses are the
architecture's own methods, fed the pairs (`PairActs`) instead of a dense matrix.
`sparse_forward(sae, ...)` returns the same `SAEOutput` (to float tolerance) as the dense
`SAE.forward`. `use_sparse(sae, device)` is the rule that picks it; `sae.sparse = True/False`
forces either path. Only a caller that asks (`approx_selection=True`, the trainer's
`approx_selection` setting) gets pairs chosen from a bfloat16 product.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from saekit.saes.base import SAE, SAEOutput, auxk_loss
from saekit.saes.pairs import PairActs, SparseCode, sum_by_feature

SPARSE_MAX_DENSITY = 1 / 8
"""Use the sparse path when at most this fraction of the features is active per token."""


class SparseSAEOutput(SAEOutput):
    """`SAEOutput` of the sparse path, which also knows each feature's firing count.

    `fired_F` ([F] int64, tokens on which each feature is active) comes from the active pairs,
    so the trainer need not scan the dense [B, F] activations for it.
    """

    fired_F: Tensor

    def _replace(self, **changes: Any) -> SparseSAEOutput:
        out = super()._replace(**changes)
        out.fired_F = self.fired_F
        return out


class GatherPre(torch.autograd.Function):
    """pre_N = ((x_BD - b_dec_D) @ W_enc_DF + b_enc_F)[rows, cols], with a sparse backward.

    `b_dec_D` is None for an SAE that does not subtract it. `pre_BF` is the same product
    computed without a graph, which chose the pairs: float32 values are gathered from it; a
    lower-precision one only chose them, and their values are recomputed here.
    """

    @staticmethod
    def forward(ctx: Any, x_BD, b_dec_D, W_enc_DF, b_enc_F, pre_BF, crow, rows, cols) -> Tensor:
        sae_in_BD = x_BD if b_dec_D is None else x_BD - b_dec_D
        ctx.save_for_backward(sae_in_BD, W_enc_DF, crow, rows, cols)
        if pre_BF.dtype == W_enc_DF.dtype:
            return pre_BF[rows, cols]
        bias = torch.sparse_csr_tensor(
            crow, cols, b_enc_F[cols], pre_BF.shape, check_invariants=False
        )  # sampled_addmm adds these values to the product at the chosen pairs alone
        return torch.sparse.sampled_addmm(bias, sae_in_BD, W_enc_DF).values()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_N: Tensor):
        sae_in_BD, W_enc_DF, crow, rows, cols = ctx.saved_tensors
        need_x, need_b_dec, need_W, need_b_enc = ctx.needs_input_grad[:4]
        F_ = W_enc_DF.shape[1]
        grad_N = grad_N.to(W_enc_DF.dtype)
        g_x = g_b_dec = g_W = g_b_enc = None
        if need_b_enc or need_b_dec:
            g_b_enc = torch.zeros(F_, dtype=grad_N.dtype, device=grad_N.device)
            g_b_enc.index_add_(0, cols, grad_N)
        if need_b_dec:  # -(sum over tokens of the input gradient) = -W_enc @ g_b_enc
            g_b_dec = -(W_enc_DF @ g_b_enc)
        if need_x:
            g_x = F.embedding_bag(
                cols, W_enc_DF.T.contiguous(), crow, mode="sum",
                per_sample_weights=grad_N, include_last_offset=True,
            ).to(sae_in_BD.dtype)  # fmt: skip
        if need_W:
            x_BD = sae_in_BD.to(W_enc_DF.dtype)
            g_W = sum_by_feature(SparseCode(crow, rows, cols), grad_N, x_BD, F_).T
        return g_x, g_b_dec, g_W, g_b_enc if need_b_enc else None, None, None, None, None


def gather_pre(sae: SAE, x_BD: Tensor, pre_BF: Tensor, code: SparseCode) -> Tensor:
    """[N] exact pre-activations of `sae` at the pairs of `code` (differentiable)."""
    b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    return GatherPre.apply(x_BD, b_dec, sae.W_enc, sae.b_enc, pre_BF, *code)


def use_sparse(sae: SAE, device: torch.device | str) -> bool:
    """Whether `sparse_forward` should be tried: `sae.sparse` if set, else when it is cheaper.

    Never where the architecture cannot compute this forward on pairs (`sparse_supported`).
    Auto: on CPU, for SAEs with a fixed k at most 1/8 of d_sae, and for SAEs without a
    fixed k (ReLU), whose `select_pairs` falls back to the dense forward on any batch where
    more than 1/8 of the activations are active. The measured break-even is far below 1/8;
    see docs/performance.md.
    """
    if not sae.sparse_supported():
        return False
    choice = getattr(sae, "sparse", None)
    if choice is not None:
        return bool(choice)
    k = sae.cfg.k
    sparse_enough = k is None or k <= SPARSE_MAX_DENSITY * sae.cfg.d_sae
    return torch.device(device).type == "cpu" and sparse_enough


def native_bf16(device: torch.device | str) -> bool:
    """Whether bfloat16 matmuls are natively fast here: a CPU with AVX512-BF16 or AMX.

    There the encoder matmul, the one dense product of a sparse step, ran about twice as
    fast in bfloat16 (65 ms against 137 ms for the default case; docs/performance.md).
    """
    return torch.device(device).type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def selection_preacts(sae: SAE, sae_in_BD: Tensor, approx: bool) -> Tensor:
    """[B, F] pre-activations that choose the active pairs (no graph).

    `approx` (and an architecture that allows it, with float32 weights): a bfloat16
    product; the chosen pairs' values are recomputed exactly by `gather_pre`, so only
    near-ties at the selection boundary may choose differently.
    """
    if approx and sae.approximate_selection and sae.W_enc.dtype == torch.float32:
        bf16 = torch.bfloat16
        return torch.addmm(sae.b_enc.to(bf16), sae_in_BD.to(bf16), sae.W_enc.to(bf16))
    return torch.addmm(sae.b_enc, sae_in_BD, sae.W_enc)


@torch.no_grad()
def selection_agreement(sae: SAE, x_BD: Tensor) -> float:
    """Fraction of the exactly chosen (token, feature) pairs that the bfloat16 choice keeps."""
    sae_in_BD = sae.sae_in(x_BD)
    exact = sae.select_pairs(selection_preacts(sae, sae_in_BD, approx=False))
    approx = sae.select_pairs(selection_preacts(sae, sae_in_BD, approx=True))
    if exact is None or approx is None or not exact.cols.numel():
        return 1.0
    F_ = sae.cfg.d_sae
    kept = torch.isin(exact.rows * F_ + exact.cols, approx.rows * F_ + approx.cols)
    return kept.float().mean().item()


def sparse_forward(
    sae: SAE,
    x_BD: Tensor,
    target_BO: Tensor,
    dead_mask_F: Tensor | None,
    sparse_feature_acts: bool = False,
    sparsity_coefficient: float | None = None,
    approx_selection: bool = False,
) -> SparseSAEOutput | None:
    """The forward of a TopK-family or ReLU SAE on sparse kernels (2-D inputs).

    Same outputs as the dense `SAE.forward` (up to near-ties with `approx_selection`):
    feature activations come back dense [B, F] (in the pre-activation buffer when it is
    float32), or as a sparse CSR [B, F] tensor with `sparse_feature_acts`. Returns None
    where the dense forward should run instead: `select_pairs` declines (a ReLU batch with
    more than `SPARSE_MAX_DENSITY` of its activations positive), or a dead-feature loss
    other than AuxK (ghost grads act on every dead feature's pre-activation) is due.
    """
    dead = dead_mask_F is not None and bool(dead_mask_F.any())
    if dead and sae.dead_feature_loss != "auxk":
        return None
    with torch.no_grad():
        pre_BF = selection_preacts(sae, sae.sae_in(x_BD), approx_selection)
        code = sae.select_pairs(pre_BF)
        if code is None:
            return None
    vals_N = gather_pre(sae, x_BD, pre_BF, code).relu()
    sae.observe_selection(vals_N.detach())
    acts = PairActs(code, vals_N)
    sae_out_BO = acts.decode(sae.W_dec) + sae.b_dec
    mse = sae.reconstruction_loss(acts, sae_out_BO, target_BO)
    coefficient = sae.sparsity_coefficient if sparsity_coefficient is None else sparsity_coefficient
    penalty = sae.sparsity_penalty(None, acts)
    zero = sae_out_BO.new_zeros(())
    sparsity_loss = zero if penalty is None else coefficient * penalty
    aux_loss = zero
    if dead:
        residual_BO = (target_BO - sae_out_BO).detach()
        aux_loss = auxk_loss(
            sae, pre_BF, dead_mask_F, residual_BO, lambda c: gather_pre(sae, x_BD, pre_BF, c)
        )
    with torch.no_grad():  # activations for the caller (dense: in pre_BF's memory if it fits)
        if sparse_feature_acts:
            f_BF = torch.sparse_csr_tensor(
                code.crow, code.cols, vals_N.detach(), pre_BF.shape, check_invariants=False
            )
        else:
            f_BF = pre_BF.zero_() if pre_BF.dtype == vals_N.dtype else vals_N.new_zeros(pre_BF.shape)
            f_BF.index_put_((code.rows, code.cols), vals_N.detach())
        fired_F = torch.bincount(code.cols[vals_N.detach() > 0], minlength=pre_BF.shape[1])
    out = SparseSAEOutput(
        sae_out_BO, f_BF, mse + sparsity_loss + aux_loss, mse, sparsity_loss, aux_loss
    )
    out.fired_F = fired_F
    return out


class SparseMixin:
    """Routes `forward` to `sparse_forward` when `use_sparse` says so (and to the dense
    `SAE.forward` where `sparse_forward` declines). Put it before `SAE` in the bases.

    An architecture using it implements `select_pairs` (its selection step) and may narrow
    `sparse_supported` or react to the chosen values in `observe_selection`. `sparse`
    (instance or class attribute): None picks automatically, True/False forces the path.
    """

    sparse: bool | None = None

    def select_pairs(self, pre_BF: Tensor) -> SparseCode | None:
        """The active pairs chosen from the pre-activations, or None to run dense."""
        raise NotImplementedError

    def sparse_supported(self) -> bool:
        """Whether the sparse path computes this SAE's forward in its current state."""
        return True

    def observe_selection(self, vals_N: Tensor) -> None:
        """Called with the chosen pairs' values (detached) on every sparse forward."""

    def forward(
        self,
        x_BD: Tensor,
        target_BO: Tensor | None = None,
        *,
        dead_mask: Tensor | None = None,
        sparsity_coefficient: float | None = None,
        sparse_feature_acts: bool = False,
        approx_selection: bool = False,
    ) -> SAEOutput:
        sae: Any = self
        target = x_BD if target_BO is None else target_BO
        eligible = (
            x_BD.dim() == 2
            and target.dim() == 2
            and x_BD.shape[-1] == sae.cfg.d_in
            and target.shape[-1] == sae.cfg.d_out
            and use_sparse(sae, x_BD.device)
        )
        if eligible:
            if dead_mask is not None:
                dead_mask = dead_mask.to(device=x_BD.device, dtype=torch.bool)
            out = sparse_forward(
                sae, x_BD, target, dead_mask, sparse_feature_acts, sparsity_coefficient,
                approx_selection,
            )  # fmt: skip
            if out is not None:
                return out
        return super().forward(  # type: ignore[misc]
            x_BD, target_BO, dead_mask=dead_mask, sparsity_coefficient=sparsity_coefficient
        )

"""Sparse kernels for the TopK family (topk, batchtopk, matryoshka) and sparse ReLU SAEs.

A k-sparse SAE only needs the encoder's dense matmul to *choose* the active features; every
other product touches just the chosen (token, feature) pairs. A ReLU SAE whose activations
are sparse is the same case: the ReLU's gradient is zero off its active pairs, so with the
pairs where the pre-activation is positive the same kernels give its exact forward, its
L1 penalty and every gradient. The dense path in `base.py` spends about five times the work
of that one matmul: the dense decode, the dense gradient of the pre-activations, and the
dense W_enc and W_dec gradients. Here the active pairs are kept as a row-major sparse code
`(crow, cols, vals)` (CSR over tokens) and two autograd Functions do the rest:

- `GatherPre`: the pre-activations at the chosen pairs. Forward gathers them from the dense
  pre-activations computed without a graph (or recomputes them exactly when that product was
  bfloat16); backward gives the W_enc gradient as a sparse-dense product, b_enc's as an
  index-add and b_dec's as one matrix-vector product.
- `SparseDecode`: `sum_k vals * W_dec[cols]` per token (an embedding bag). Backward gives the
  values' gradient as a sampled dense-dense product at the chosen pairs only, and a sparse
  W_dec gradient.

`sparse_forward(sae, ...)` is the whole training forward on these kernels; it returns the same
`SAEOutput` (to float tolerance, up to bf16 near-ties; see `select_in_bf16`) as the dense
`SAE.forward`. `use_sparse(sae, x)` is the rule
that picks it; `sae.sparse = True/False` forces either path.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from saekit.saes.base import SAE, SAEOutput, aux_k_for, fvu

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

SPARSE_MAX_DENSITY = 1 / 8
"""Use the sparse path when at most this fraction of the features is active per token."""


class SparseCode(NamedTuple):
    """The active (token, feature) pairs of a batch, row-major (CSR over the B tokens)."""

    crow: Tensor
    """[B + 1] int64: token b owns pairs crow[b]:crow[b + 1]."""
    rows: Tensor
    """[N] int64: token of each pair (non-decreasing)."""
    cols: Tensor
    """[N] int64: feature of each pair (increasing within a token)."""


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


def code_from_topk(idx_BK: Tensor) -> SparseCode:
    """The code of a per-token top-k: k pairs per token."""
    B, K = idx_BK.shape
    device = idx_BK.device
    cols = idx_BK.sort(dim=-1).values.reshape(-1)
    crow = torch.arange(0, B * K + 1, K, device=device)
    rows = torch.arange(B, device=device).repeat_interleave(K)
    return SparseCode(crow, rows, cols)


def code_from_flat(flat_idx: Tensor, B: int, F_: int) -> SparseCode:
    """The code of entries chosen by their index into the flattened [B, F] matrix."""
    flat_idx = flat_idx.sort().values
    rows, cols = flat_idx // F_, flat_idx % F_
    crow = torch.zeros(B + 1, dtype=torch.long, device=flat_idx.device)
    crow[1:] = torch.bincount(rows, minlength=B).cumsum(0)
    return SparseCode(crow, rows, cols)


def _sum_by_feature(code: SparseCode, weights_N: Tensor, dense_BX: Tensor, F_: int) -> Tensor:
    """[F, X]: row f is the sum over f's pairs (b, f) of weights * dense_BX[b].

    The sparse [F, B] @ dense [B, X] product as an embedding bag over the pairs sorted by
    feature (about 3x faster on CPU than torch's COO matmul).
    """
    order = code.cols.argsort(stable=True)
    offsets = torch.zeros(F_ + 1, dtype=torch.long, device=code.cols.device)
    offsets[1:] = torch.bincount(code.cols, minlength=F_).cumsum(0)
    return F.embedding_bag(
        code.rows[order], dense_BX, offsets, mode="sum",
        per_sample_weights=weights_N[order], include_last_offset=True,
    )  # fmt: skip


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
            g_W = _sum_by_feature(SparseCode(crow, rows, cols), grad_N, x_BD, F_).T
        return g_x, g_b_dec, g_W, g_b_enc if need_b_enc else None, None, None, None, None


def gather_pre(sae: SAE, x_BD: Tensor, pre_BF: Tensor, code: SparseCode) -> Tensor:
    """[N] exact pre-activations of `sae` at the pairs of `code` (differentiable)."""
    b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    return GatherPre.apply(x_BD, b_dec, sae.W_enc, sae.b_enc, pre_BF, *code)


class SparseDecode(torch.autograd.Function):
    """out_BO[b] = sum over token b's pairs of vals_N * W_dec_FO[cols] (no bias)."""

    @staticmethod
    def forward(ctx: Any, vals_N, W_dec_FO, crow, rows, cols) -> Tensor:
        ctx.save_for_backward(vals_N, W_dec_FO, crow, rows, cols)
        return F.embedding_bag(
            cols, W_dec_FO, crow, mode="sum", per_sample_weights=vals_N, include_last_offset=True
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_BO: Tensor):
        vals_N, W_dec_FO, crow, rows, cols = ctx.saved_tensors
        F_ = W_dec_FO.shape[0]
        B = crow.shape[0] - 1
        g_vals = g_W = None
        if ctx.needs_input_grad[0]:
            # <grad_BO[b], W_dec[f]> at the chosen pairs only (sampled dense-dense product)
            mask = torch.sparse_csr_tensor(
                crow, cols, torch.zeros_like(vals_N), (B, F_), check_invariants=False
            )
            g_vals = torch.sparse.sampled_addmm(mask, grad_BO, W_dec_FO.T).values()
        if ctx.needs_input_grad[1]:
            g_W = _sum_by_feature(SparseCode(crow, rows, cols), vals_N, grad_BO, F_)
        return g_vals, g_W, None, None, None


def sparse_decode(code: SparseCode, vals_N: Tensor, W_dec_FO: Tensor) -> Tensor:
    """[B, O] decoded from the pairs' values (without b_dec)."""
    return SparseDecode.apply(vals_N.to(W_dec_FO.dtype), W_dec_FO, *code)


def use_sparse(sae: SAE, x_BD: Tensor) -> bool:
    """Whether `sparse_forward` should be tried: `sae.sparse` if set, else when it is cheaper.

    Auto: on CPU, for TopK-family SAEs with k at most 1/8 of d_sae and no decoder-norm
    rescaling, and for ReLU SAEs (which fall back to the dense forward on any batch where
    more than 1/8 of the activations are positive). The measured break-even is far below
    1/8; see docs/performance.md.
    """
    choice = getattr(sae, "sparse", None)
    supported = sae.architecture == "relu" or not sae.cfg.rescale_acts_by_decoder_norm
    if choice is not None:
        return bool(choice) and supported
    if not supported or x_BD.device.type != "cpu":
        return False
    return sae.architecture == "relu" or sae.cfg.k <= SPARSE_MAX_DENSITY * sae.cfg.d_sae


def select_in_bf16(sae: SAE, x_BD: Tensor) -> bool:
    """Whether the sparse path chooses the active pairs from a bfloat16 encoder product.

    The encoder matmul is the one dense product of a sparse step. Where the CPU multiplies
    bfloat16 natively (AVX512-BF16 or AMX) it runs about twice as fast in bfloat16; the chosen
    pairs' values are then recomputed exactly in float32, so only near-ties at the k-th
    largest pre-activation may choose differently. Auto: TopK family in training mode only
    (inference and ReLU SAEs stay exact); `sae.select_bf16 = True/False` forces it.
    """
    choice = getattr(sae, "select_bf16", None)
    if choice is not None:
        return bool(choice)
    return (
        sae.training
        and sae.architecture != "relu"
        and x_BD.device.type == "cpu"
        and sae.W_enc.dtype == torch.float32
        and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    )


def _selection_preacts(sae: SAE, sae_in_BD: Tensor) -> Tensor:
    """[B, F] pre-activations that choose the active pairs (no graph)."""
    if select_in_bf16(sae, sae_in_BD):
        bf16 = torch.bfloat16
        return torch.addmm(sae.b_enc.to(bf16), sae_in_BD.to(bf16), sae.W_enc.to(bf16))
    return torch.addmm(sae.b_enc, sae_in_BD, sae.W_enc)


def _select(sae: SAE, pre_BF: Tensor) -> SparseCode:
    """The active pairs: per-token top-k (topk), batch top-(k*B) (batchtopk, matryoshka) or
    every positive pre-activation (relu)."""
    B, F_ = pre_BF.shape
    if sae.architecture == "relu":
        rows, cols = (pre_BF > 0).nonzero(as_tuple=True)  # row-major, columns increasing
        crow = torch.zeros(B + 1, dtype=torch.long, device=pre_BF.device)
        crow[1:] = torch.bincount(rows, minlength=B).cumsum(0)
        return SparseCode(crow, rows, cols)
    if sae.architecture == "topk":
        return code_from_topk(pre_BF.topk(sae.cfg.k, dim=-1, sorted=False).indices)
    flat = pre_BF.flatten()
    n = min(sae.cfg.k * B, flat.numel())
    return code_from_flat(flat.topk(n, sorted=False).indices, B, F_)


def sparse_forward(
    sae: SAE,
    x_BD: Tensor,
    target_BO: Tensor,
    dead_mask_F: Tensor | None,
    sparse_feature_acts: bool = False,
    sparsity_coefficient: float | None = None,
) -> SparseSAEOutput | None:
    """The forward of a TopK-family or ReLU SAE on sparse kernels (2-D inputs).

    Same outputs as the dense `SAE.forward` (up to near-ties when `select_in_bf16`): feature
    activations come back dense [B, F] (in the pre-activation buffer when it is float32), or
    as a sparse CSR [B, F] tensor with `sparse_feature_acts`; losses are FVU (+ AuxK when
    `dead_mask_F` has dead features; matryoshka sums prefix FVUs; relu adds its L1 penalty).
    Returns None where the dense forward should run instead: a ReLU SAE whose batch has more
    than `SPARSE_MAX_DENSITY` of its activations positive, or that needs ghost grads.
    """
    relu = sae.architecture == "relu"
    if relu and dead_mask_F is not None and bool(dead_mask_F.any()):
        return None  # ghost grads act on every dead feature's pre-activation: dense
    with torch.no_grad():
        pre_BF = _selection_preacts(sae, sae.sae_in(x_BD))
        code = _select(sae, pre_BF)
        if relu and code.cols.numel() > SPARSE_MAX_DENSITY * pre_BF.numel():
            return None
        aux = None if relu else _aux_code(sae, pre_BF, dead_mask_F)
    pre_N = gather_pre(sae, x_BD, pre_BF, code)
    vals_N = pre_N.relu()
    if sae.architecture == "batchtopk" or sae.architecture == "matryoshka":
        if sae.training:
            sae._update_threshold(vals_N.detach())
    sae_out_BO = sparse_decode(code, vals_N, sae.W_dec) + sae.b_dec
    if sae.architecture == "matryoshka":
        mse = _matryoshka_fvu(sae, code, vals_N, target_BO)
    else:
        mse = fvu(sae_out_BO, target_BO)
    zero = sae_out_BO.new_zeros(())
    sparsity_loss = aux_loss = zero
    if relu:  # L1 of the activations (times the decoder row norms when weighted), batch mean
        weights_N = vals_N
        if sae.cfg.decoder_norm == "weighted":
            weights_N = vals_N * sae.W_dec.norm(dim=1)[code.cols]
        coefficient = sae.sparsity_coefficient if sparsity_coefficient is None else sparsity_coefficient
        sparsity_loss = coefficient * weights_N.sum() / x_BD.shape[0]
    if aux is not None:
        aux_code, aux_dead_N = aux
        aux_vals_N = gather_pre(sae, x_BD, pre_BF, aux_code)
        aux_vals_N = aux_vals_N.relu() * aux_dead_N
        residual_BO = (target_BO - sae_out_BO).detach()
        aux_out_BO = sparse_decode(aux_code, aux_vals_N, sae.W_dec)
        aux_loss = sae.cfg.aux_coefficient * fvu(aux_out_BO, residual_BO)
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


def _aux_code(sae: SAE, pre_BF: Tensor, dead_mask_F: Tensor | None):
    """(code, is-dead mask [N]) of the AuxK pairs, or None when AuxK is off."""
    if dead_mask_F is None or not bool(dead_mask_F.any()):
        return None
    k_aux = aux_k_for(sae, dead_mask_F)
    dead_pre_BF = torch.where(dead_mask_F, pre_BF.relu(), 0.0)
    code = code_from_topk(dead_pre_BF.topk(k_aux, dim=-1, sorted=False).indices)
    return code, dead_mask_F[code.cols].to(sae.W_enc.dtype)


def _matryoshka_fvu(sae: SAE, code: SparseCode, vals_N: Tensor, target_BO: Tensor) -> Tensor:
    """Sum over prefixes m of the FVU of the first m features' reconstruction."""
    loss, start = vals_N.new_zeros(()), 0
    partial_BO = sae.b_dec.expand_as(target_BO)
    for end in sae.cfg.prefixes:
        in_block_N = ((code.cols >= start) & (code.cols < end)).to(vals_N.dtype)
        partial_BO = partial_BO + sparse_decode(code, vals_N * in_block_N, sae.W_dec)
        loss = loss + fvu(partial_BO, target_BO)
        start = end
    return loss


class SparseMixin:
    """Routes `forward` of a TopK-family or ReLU SAE to `sparse_forward` when `use_sparse`
    says so (and the dense `SAE.forward` where `sparse_forward` declines).

    Put it before `SAE` in the bases. `sparse` (instance or class attribute): None picks
    automatically, True/False forces the sparse/dense path.
    """

    sparse: bool | None = None

    def forward(
        self,
        x_BD: Tensor,
        target_BO: Tensor | None = None,
        *,
        dead_mask: Tensor | None = None,
        sparsity_coefficient: float | None = None,
        sparse_feature_acts: bool = False,
    ) -> SAEOutput:
        sae: Any = self
        target = x_BD if target_BO is None else target_BO
        eligible = (
            x_BD.dim() == 2
            and target.dim() == 2
            and x_BD.shape[-1] == sae.cfg.d_in
            and target.shape[-1] == sae.cfg.d_out
            and (sae.architecture in ("topk", "relu") or sae.training)  # eval batchtopk: JumpReLU
            and use_sparse(sae, x_BD)
        )
        if eligible:
            if dead_mask is not None:
                dead_mask = dead_mask.to(device=x_BD.device, dtype=torch.bool)
            out = sparse_forward(
                sae, x_BD, target, dead_mask, sparse_feature_acts, sparsity_coefficient
            )
            if out is not None:
                return out
        return super().forward(  # type: ignore[misc]
            x_BD, target_BO, dead_mask=dead_mask, sparsity_coefficient=sparsity_coefficient
        )

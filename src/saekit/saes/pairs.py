"""Feature activations as (token, feature) pairs, and the kernels that decode them.

A k-sparse batch of activations is kept as a row-major sparse code `(crow, rows, cols)` (CSR
over the B tokens) plus one value per pair. `sparse_decode` is `sum_k vals * W_dec[cols]` per
token (an embedding bag) with a backward that touches the chosen pairs only.

`DenseActs` and `PairActs` give the loss helpers one view of a batch's activations, dense
[B, F] or as pairs, so each loss (the matryoshka prefix FVU, the L1 penalty, AuxK) is written
once for the dense `SAE.forward` and the sparse path of `saekit.saes.sparse`.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


class SparseCode(NamedTuple):
    """The active (token, feature) pairs of a batch, row-major (CSR over the B tokens)."""

    crow: Tensor
    """[B + 1] int64: token b owns pairs crow[b]:crow[b + 1]."""
    rows: Tensor
    """[N] int64: token of each pair (non-decreasing)."""
    cols: Tensor
    """[N] int64: feature of each pair (increasing within a token)."""


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
    return SparseCode(_crow(rows, B), rows, cols)


def code_from_mask(mask_BF: Tensor) -> SparseCode:
    """The code of the True entries of a [B, F] mask."""
    rows, cols = mask_BF.nonzero(as_tuple=True)  # row-major, columns increasing
    return SparseCode(_crow(rows, mask_BF.shape[0]), rows, cols)


def _crow(rows: Tensor, B: int) -> Tensor:
    crow = torch.zeros(B + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=B).cumsum(0)
    return crow


def sum_by_feature(code: SparseCode, weights_N: Tensor, dense_BX: Tensor, F_: int) -> Tensor:
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
            g_W = sum_by_feature(SparseCode(crow, rows, cols), vals_N, grad_BO, F_)
        return g_vals, g_W, None, None, None


def sparse_decode(code: SparseCode, vals_N: Tensor, W_dec_FO: Tensor) -> Tensor:
    """[B, O] decoded from the pairs' values (without b_dec)."""
    return SparseDecode.apply(vals_N.to(W_dec_FO.dtype), W_dec_FO, *code)


class DenseActs(NamedTuple):
    """A batch's feature activations as a dense [B, F] tensor."""

    f_BF: Tensor

    @property
    def n_tokens(self) -> int:
        return self.f_BF.shape[0]

    def decode(self, W_dec_FO: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """[B, O]: the features lo:hi decoded (without b_dec)."""
        return self.f_BF[:, lo:hi] @ W_dec_FO[lo:hi]

    def weighted_sum(self, weights_F: Tensor | None = None) -> Tensor:
        """Sum over tokens and features of f (times weights_F[feature])."""
        return (self.f_BF if weights_F is None else self.f_BF * weights_F).sum()


class PairActs(NamedTuple):
    """A batch's feature activations as values at the pairs of a sparse code."""

    code: SparseCode
    vals_N: Tensor

    @property
    def n_tokens(self) -> int:
        return self.code.crow.shape[0] - 1

    def decode(self, W_dec_FO: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """[B, O]: the features lo:hi decoded (without b_dec)."""
        vals_N = self.vals_N
        if lo > 0 or (hi is not None and hi < W_dec_FO.shape[0]):
            cols = self.code.cols
            in_block = (cols >= lo) if hi is None else (cols >= lo) & (cols < hi)
            vals_N = vals_N * in_block.to(vals_N.dtype)
        return sparse_decode(self.code, vals_N, W_dec_FO)

    def weighted_sum(self, weights_F: Tensor | None = None) -> Tensor:
        """Sum over the pairs of their values (times weights_F[feature])."""
        vals_N = self.vals_N
        return (vals_N if weights_F is None else vals_N * weights_F[self.code.cols]).sum()


Acts = DenseActs | PairActs

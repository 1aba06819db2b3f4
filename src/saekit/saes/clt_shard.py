"""A cross-layer transcoder whose features are split across torchrun ranks.

Rank r of W holds features [r * F / W, (r + 1) * F / W) of every layer: its slice of every
encoder (`W_enc [L, D, F/W]`, `b_enc`, `threshold`) and of every decoder
(`W_dec_{l} [F/W, L - l, O]`); `b_dec` is replicated. Every rank sees the same tokens. The
sparsity choice is global: each rank offers its k largest candidates per token and layer
(batchtopk: k * B per layer), all ranks gather them and keep the values at or above the
k-th largest of all, so the kept set is the unsharded one (up to exact ties); jumprelu is
per feature, so each rank applies its own thresholds. Each rank decodes its features and the
partial reconstructions are summed with all_reduce; the loss (per-layer FVU + AuxK, whose
dead-feature top-k is chosen the same way; jumprelu's penalties, summed over each rank's
features with their whole decoders) is then the same on every rank, and the sum's backward
passes the gradient through unchanged to each rank's partial sum.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from saekit.saes.base import SAEOutput
from saekit.saes.clt import CLTConfig, CrossLayerTranscoder, smallest_kept, wide


class _SumAcrossRanks(torch.autograd.Function):
    """Forward: all_reduce sum. Backward: the identity (every rank's loss is the same
    function of the sum, so d loss / d own part = d loss / d sum)."""

    @staticmethod
    def forward(ctx, part: Tensor) -> Tensor:  # type: ignore[override]
        total = part.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad


def sum_across_ranks(part: Tensor) -> Tensor:
    """The sum of `part` over ranks, differentiable as described in `_SumAcrossRanks`."""
    return _SumAcrossRanks.apply(part)


def _global_kth(values: Tensor, k: int, dim: int = -1) -> Tensor:
    """The k-th largest along `dim` over every rank's `values` (each rank's own top k)."""
    k_local = min(k, values.shape[dim])
    top = values.topk(k_local, dim=dim).values
    gathered = [torch.empty_like(top) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, top.contiguous())
    everything = torch.cat(gathered, dim=dim)
    return everything.topk(min(k, everything.shape[dim]), dim=dim).values.narrow(dim, -1, 1)


def feature_slice(d_sae: int, rank: int, world: int) -> slice:
    """The features rank `rank` of `world` holds (d_sae must divide evenly)."""
    if d_sae % world:
        raise ValueError(f"d_sae={d_sae} features per layer must divide evenly by {world} ranks")
    width = d_sae // world
    return slice(rank * width, (rank + 1) * width)


class ShardedCLT(nn.Module):
    """This rank's slice of a CLT (see the module docstring); `forward` as the CLT's, with
    feature activations of this rank's features only ([B, L * F/W])."""

    architecture = "clt"
    resamplable = False
    approximate_selection = False
    batch_dependent = True  # the choice spans ranks; a data-parallel split cannot reproduce it

    def __init__(self, cfg: CLTConfig, rank: int, world: int):
        super().__init__()
        self.cfg, self.rank, self.world = cfg, rank, world
        self.features = feature_slice(cfg.d_sae, rank, world)
        k = None if cfg.activation in CLTConfig.PENALISED else 1  # the k-choice is global here
        local = CLTConfig(**{**cfg.__dict__, "d_sae": cfg.d_sae // world, "k": k})
        self.local = CrossLayerTranscoder(local)  # parameters (and jumprelu's activation)

    @property
    def sparsity_setting(self) -> str:
        return self.local.sparsity_setting

    @property
    def sparsity_coefficient(self) -> float:
        return self.local.sparsity_coefficient

    @property
    def dead_feature_loss(self) -> str | None:
        return self.local.dead_feature_loss

    @property
    def b_dec(self) -> nn.Parameter:
        """The decoder bias, the same on every rank."""
        return self.local.b_dec

    @classmethod
    def from_full(cls, clt: CrossLayerTranscoder, rank: int, world: int) -> ShardedCLT:
        """This rank's slice of `clt` (a copy)."""
        shard = cls(clt.cfg, rank, world)
        full = clt.state_dict_flat()
        cut = shard.features
        with torch.no_grad():
            shard.local.load_flat({
                name: value if name == "b_dec" else value[cut] if name.startswith("W_dec_")
                else value[..., cut] if name != "W_enc" else value[:, :, cut]
                for name, value in full.items()
            })  # fmt: skip
        return shard.train(clt.training)

    def gather_full(self) -> CrossLayerTranscoder | None:
        """The whole CLT on rank 0 (None elsewhere); a collective: every rank calls it."""
        mine = self.local.state_dict_flat()
        parts: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if self.rank != 0:
            return None
        assert parts is not None
        whole = {}
        for name in mine:
            if name == "b_dec":
                whole[name] = mine[name]
            elif name.startswith("W_dec_"):
                whole[name] = torch.cat([p[name] for p in parts])
            else:
                whole[name] = torch.cat([p[name] for p in parts], dim=-1)
        clt = CrossLayerTranscoder(self.cfg)
        clt.load_flat(whole)
        return clt.train(self.training)

    # ---- the computation -----------------------------------------------------------------

    def activate(self, pre_BLF: Tensor) -> Tensor:
        """This rank's share of the global per-layer TopK / BatchTopK choice (jumprelu: its
        own features' JumpReLU)."""
        k = self.cfg.k
        if self.local.penalised:
            return self.local.activate(pre_BLF)
        if self.cfg.activation == "topk":
            return torch.where(pre_BLF >= _global_kth(pre_BLF, k), pre_BLF.relu(), 0.0)
        relu_BLF = pre_BLF.relu()
        if not self.training:
            return relu_BLF * (pre_BLF > self.local.threshold)
        B, L, F = relu_BLF.shape
        flat_LN = relu_BLF.permute(1, 0, 2).reshape(L, B * F)
        kth_L1 = _global_kth(flat_LN, k * B)
        f_BLF = torch.where((relu_BLF > 0) & (relu_BLF >= kth_L1.view(1, L, 1)), relu_BLF, 0.0)
        kept_L = smallest_kept(f_BLF)
        dist.all_reduce(kept_L, op=dist.ReduceOp.MIN)  # the smallest kept on any rank
        self.local.move_thresholds(kept_L)
        return f_BLF

    def decode(self, f_BLF: Tensor, bias: bool = True) -> Tensor:
        """The whole reconstruction [B, L, O]: every rank's part summed (+ b_dec once)."""
        y_BLO = sum_across_ranks(wide(self.local.decode(f_BLF, bias=False)))
        return y_BLO + self.local.b_dec if bias else y_BLO

    def forward(
        self,
        x_BLD: Tensor,
        target_BLO: Tensor,
        *,
        dead_mask: Tensor | None = None,
        sparsity_coefficient: float | None = None,
        **_trainer_hints: Any,
    ) -> SAEOutput:
        """As `CrossLayerTranscoder.forward`; `dead_mask` is this rank's [L * F/W]."""
        L, F = self.cfg.n_layers, self.cfg.d_sae // self.world
        pre_BLF = self.local.pre_acts(x_BLD)
        f_BLF = self.activate(pre_BLF)
        y_BLO = self.decode(f_BLF)
        mse = self.local.layer_losses(target_BLO, y_BLO).sum()
        aux = sparsity = mse.new_zeros(())
        if self.local.penalised:  # each rank's features' part, summed
            own = self.local.sparsity_loss(pre_BLF, f_BLF, sparsity_coefficient)
            sparsity = sum_across_ranks(own)
        elif dead_mask is not None:
            dead_LF = dead_mask.view(L, F).to(pre_BLF.device)
            counts_L = dead_LF.sum(1)
            dist.all_reduce(counts_L)
            if int(counts_L.max()):
                aux = self.aux_loss(pre_BLF, dead_LF, int(counts_L.max()), target_BLO - y_BLO)
        return SAEOutput(y_BLO, f_BLF.flatten(1), mse + sparsity + aux, mse, sparsity, aux)

    def aux_loss(
        self, pre_BLF: Tensor, dead_LF: Tensor, most_dead: int, residual_BLO: Tensor
    ) -> Tensor:
        """AuxK as the CLT's, the top `aux_k` dead features of each layer chosen globally."""
        k_aux = min(self.cfg.aux_k or max(self.cfg.d_in // 2, 1), most_dead)
        masked_BLF = torch.where(dead_LF, pre_BLF.relu(), 0.0)
        kth = _global_kth(masked_BLF.detach(), k_aux)
        aux_BLF = torch.where((masked_BLF > 0) & (masked_BLF >= kth), masked_BLF, 0.0)
        aux_out_BLO = self.decode(aux_BLF, bias=False)
        return (
            self.cfg.aux_coefficient
            * self.local.layer_losses(residual_BLO.detach(), aux_out_BLO).sum()
        )

    def before_optimizer_step(self) -> None:
        """No decoder constraint."""

    def after_optimizer_step(self) -> None:
        """As the CLT's (jumprelu thresholds clamped at >= 0)."""
        self.local.after_optimizer_step()

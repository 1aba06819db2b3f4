"""The two ways a run's SAEs are placed on torchrun ranks, as two small `Trainer` variants.

Both see the same global batches on every rank (see `saekit.data.strided`); only rank 0
writes files, logs and progress.
- `ReplicatedTrainer` (`--sae-placement replicate`, the default): rank r trains every SAE on
  rows [r*b, (r+1)*b) of each global batch (b = batch_tokens / world). Each rank's loss is
  rescaled so that the mean over ranks is the loss of the global batch (FVU divides by the
  GLOBAL batch variance, merged from per-rank means and sums of squares); gradients are summed
  and divided by world (one all_reduce per SAE); firing counts are summed, so dead-feature
  masks agree on every rank.
- `ShardedTrainer` (`--sae-placement shard`): SAE i is trained by rank i % world on the whole
  global batch (sweeps); its state travels to rank 0 for checkpoints, evaluations and saving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from saekit.training.dead import FiringStats
from saekit.training.trainer import Batch, Callbacks, SAEUnit, Trainer


@dataclass
class RankTrainer(Trainer):
    """What both placements share: callbacks that write run on rank 0 only, time-based
    checkpoints decided by rank 0's clock, and a stop signal on any rank stopping all."""

    rank: int = 0
    world: int = 1

    def fit(self, batches: Iterator[Batch]) -> None:
        """As `Trainer.fit`; callbacks that write run on rank 0 only, after `collect()`."""
        original, main = self.callbacks, self.rank == 0

        def collected(fn: Callable[[int, int], None] | None):
            if fn is None:
                return None

            def call(step: int, tokens: int) -> None:
                self.collect()
                if main:
                    fn(step, tokens)

            return call

        self.callbacks = Callbacks(
            on_log=original.on_log if main or not original.on_log else _ignore,  # see _with_firing
            on_eval=collected(original.on_eval),
            on_checkpoint=collected(original.on_checkpoint),
            on_progress=original.on_progress if main else None,
        )
        try:
            super().fit(batches)
        finally:
            self.callbacks = original

    def collect(self) -> None:
        """Bring every SAE's current state to rank 0 (nothing to do where all ranks hold it)."""

    def _agree(self, flag: bool) -> bool:
        """Rank 0's clock decides a time-based checkpoint for every rank."""
        value = torch.tensor([int(flag)], device=self._device())
        dist.broadcast(value, src=0)
        return bool(value.item())

    def _stopping(self) -> bool:
        """A stop signal on any rank stops every rank at the same step."""
        flag = torch.tensor([self._stop_signal or 0], device=self._device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()):
            self._stop_signal = int(flag.item())
        return self._stop_signal is not None

    def _device(self) -> torch.device:
        return self.units[0].firing.window_counts_F.device


def _ignore(*args: Any) -> None:
    """A callback for ranks other than 0 that must still take part in its collectives."""


class SummedFiringStats(FiringStats):
    """Firing statistics over the rows of all ranks (counts summed with all_reduce)."""

    @torch.no_grad()
    def add_counts(self, fired_F: Tensor, n_tokens: int) -> None:
        fired_F = fired_F.clone()
        dist.all_reduce(fired_F)
        super().add_counts(fired_F, n_tokens * dist.get_world_size())


def _global_variance_ratio(y_BD: Tensor) -> Tensor:
    """local batch variance / global batch variance (total variance as `fvu` defines it),
    from every rank's mean and sum of squared deviations (equal rows per rank)."""
    y_BD = y_BD.detach().float()
    n, world = y_BD.shape[0], dist.get_world_size()
    mean_D = y_BD.mean(0)
    m2 = (y_BD - mean_D).pow(2).sum()
    stats = torch.cat([mean_D, m2.reshape(1)])
    gathered = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(gathered, stats)
    stats_WD = torch.stack(gathered)
    means_WD, m2_W = stats_WD[:, :-1], stats_WD[:, -1]
    m2_global = m2_W.sum() + n * (means_WD - means_WD.mean(0)).pow(2).sum()
    tiny = torch.finfo(m2.dtype).tiny
    return (m2 / n).clamp_min(tiny) / (m2_global / (n * world)).clamp_min(tiny)


@dataclass
class ReplicatedTrainer(RankTrainer):
    """Every rank trains every SAE on its slice of each global batch (data parallel)."""

    def __post_init__(self) -> None:
        for unit in self.units:
            summed = SummedFiringStats(
                unit.firing.tokens_since_fired_F.numel(), unit.firing.dead_after_tokens,
                unit.firing.tokens_since_fired_F.device,
            )  # fmt: skip
            summed.load_state_dict(unit.firing.state_dict())
            unit.firing = summed

    def _train_unit(self, unit: SAEUnit, batch: Batch) -> dict[str, float]:
        rows = next(iter(batch.values())).shape[0] // self.world
        lo = self.rank * rows
        return super()._train_unit(unit, {h: t[lo : lo + rows] for h, t in batch.items()})

    def _global_loss(self, unit: SAEUnit, out, target_BD: Tensor):
        """Rescale each FVU term by local/global batch variance, so the mean over ranks of
        every loss part is that part on the global batch."""
        ratio = _global_variance_ratio(target_BD)
        aux_ratio = ratio  # gated's aux term is an FVU of the target too
        dead = unit.use_dead_mask and bool(unit.firing.dead_mask().any())
        if dead and unit.sae.dead_feature_loss == "auxk":  # FVU of the (detached) residual
            aux_ratio = _global_variance_ratio(target_BD - out.sae_out.detach())
        mse, aux = out.mse_loss * ratio, out.aux_loss * aux_ratio
        return out._replace(loss=mse + out.sparsity_loss + aux, mse_loss=mse, aux_loss=aux)

    def _reduce_gradients(self, unit: SAEUnit) -> None:
        params = [p for p in unit.sae.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        flat /= self.world
        for p, g in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.grad.copy_(g.view_as(p))

    def _reduce_metrics(self, values: Tensor) -> Tensor:
        dist.all_reduce(values)
        return values / self.world


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@dataclass
class ShardedTrainer(RankTrainer):
    """SAE i is trained by rank i % world on the whole global batch."""

    def owner(self, index: int) -> int:
        """The rank that trains unit `index`."""
        return index % self.world

    def _owns(self, unit: SAEUnit) -> bool:
        return self.owner(self.units.index(unit)) == self.rank

    def collect(self) -> None:
        mine = {u.name: _to_cpu(u.state_dict()) for u in self.units if self._owns(u)}
        parts: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if self.rank != 0:
            return
        assert parts is not None
        for unit in self.units:
            if not self._owns(unit):
                unit.load_state_dict(next(p[unit.name] for p in parts if unit.name in p))
                if unit.last_density_F is not None:
                    unit.last_density_F = unit.last_density_F.to(unit.firing.window_counts_F.device)

    def _train_unit(self, unit: SAEUnit, batch: Batch) -> dict[str, float]:
        return super()._train_unit(unit, batch) if self._owns(unit) else {}

    def _with_firing(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        metrics = super()._with_firing(metrics)
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, {u.name: metrics[u.name] for u in self.units if self._owns(u)})
        merged = {name: m for part in parts for name, m in part.items()}
        return {u.name: merged[u.name] for u in self.units}

    def _resample(self, unit: SAEUnit, batch: Batch) -> None:
        if self._owns(unit):
            super()._resample(unit, batch)

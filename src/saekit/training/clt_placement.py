"""`--sae-placement features`: one cross-layer transcoder split by features across torchrun
ranks (`saekit.saes.clt_shard.ShardedCLT`). Every rank trains its slice of every encoder and
decoder on the whole global batch; the loss, and so the replicated decoder bias's update,
is the same on every rank, so no gradient is exchanged. Rank 0 gathers the whole CLT, its
firing statistics and every rank's training state at each `collect()` (checkpoints,
evaluations, the end); a checkpoint holds every rank's slice and resumes under the same
number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from saekit.training.clt import CLTUnit
from saekit.training.placement import RankTrainer, _to_cpu
from saekit.training.trainer import Batch, SAEUnit, Trainer


@dataclass
class FeatureShardedTrainer(RankTrainer):
    """Trains the run's CLT with its features split across the ranks (see the module)."""

    _shards: list[Any] | None = field(default=None, repr=False)
    _densities: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from saekit.saes.clt_shard import ShardedCLT

        if len(self.units) != 1 or not isinstance(self.units[0].sae, ShardedCLT):
            raise ValueError("--sae-placement features trains one CLT: also give --cross-layer")

    def _train_unit(self, unit: SAEUnit, batch: Batch) -> dict[str, float]:
        metrics = super()._train_unit(unit, batch)  # loss parts: the same on every rank
        l0 = torch.tensor([metrics["l0"]], device=self._device())
        dist.all_reduce(l0)  # each rank counted its own features
        return metrics | {"l0": float(l0.item())}

    def _with_firing(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for unit in self.units:
            density_F = Trainer.density(unit)
            local = torch.stack([
                unit.firing.dead_mask().float().mean(),
                (density_F > self.cfg.dense_threshold).float().mean(),
            ]).to(self._device())  # fmt: skip
            dist.all_reduce(local)  # equal slices: the mean of the ranks' fractions
            dead, dense = (local / self.world).tolist()
            metrics[unit.name] |= {"dead_fraction": dead, "dense_fraction": dense}
        return metrics

    def density(self, unit: SAEUnit) -> torch.Tensor:  # type: ignore[override]
        """Every feature's density on rank 0 after `collect()` (else this rank's slice)."""
        return self._densities.get(unit.name, Trainer.density(unit))

    def collect(self) -> None:
        """The whole CLT, its densities and every rank's state on rank 0."""
        states = {u.name: _to_cpu(u.state_dict()) for u in self.units}
        densities = {u.name: Trainer.density(u).cpu() for u in self.units}
        parts: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object((states, densities), parts, dst=0)
        for unit in self.units:
            assert isinstance(unit, CLTUnit)
            unit.gathered = unit.sae.gather_full()  # a collective: every rank
        if self.rank == 0:
            assert parts is not None
            self._shards = [p[0] for p in parts]
            device = self._device()
            self._densities = {
                u.name: torch.cat([p[1][u.name] for p in parts]).to(device) for u in self.units
            }

    def state_dict(self) -> dict:
        """Rank 0's, with every rank's unit states (from the last `collect()`)."""
        return {**super().state_dict(), "feature_shards": self._shards, "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world") != self.world or not state.get("feature_shards"):
            raise ValueError(
                f"this checkpoint was not written by --sae-placement features on {self.world} "
                "ranks; resume it with the placement and --nproc it was trained with"
            )
        super().load_state_dict({**state, "units": state["feature_shards"][self.rank]})

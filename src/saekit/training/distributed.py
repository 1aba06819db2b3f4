"""Data-parallel training on torch.distributed, launched by torchrun (gloo on CPU, NCCL on CUDA).

Every rank runs the model forward on every `world`-th chunk of the activation stream and the
chunks are all-gathered (`saekit.data.strided`), so each rank sees the stream a single process
would see and keeps an identical shuffle buffer: batches, checkpoints and resume are those of
one process. How the SAEs are placed on the ranks: `saekit.training.placement`.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from saekit.ranks import is_main, launched_by_torchrun, rank_and_world
from saekit.saes.multisite import MultisiteConfig
from saekit.training.config import LoopSettings
from saekit.training.placement import RankTrainer, ReplicatedTrainer, ShardedTrainer
from saekit.training.trainer import SAEUnit, Trainer

__all__ = ["DistributedError", "collect", "is_main", "launched_by_torchrun", "make_trainer",
           "process_group", "rank_and_world"]


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died or hangs."""


@contextmanager
def process_group(timeout_s: int, device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group (if launched by it) and yield this rank's device.

    NCCL for CUDA devices, gloo otherwise; every collective times out after
    `timeout_s` seconds (the setting `dist_timeout`). A failed collective becomes a `DistributedError`.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield device
        return
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    rank, world = rank_and_world()
    try:
        yield device
    except (dist.DistError, RuntimeError) as err:
        if isinstance(err, DistributedError) or not _is_collective_failure(err):
            raise
        raise DistributedError(
            f"rank {rank} of {world}: a collective failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Another rank has died or stalled "
            f"for more than --dist-timeout={timeout_s}s; see that rank's error above."
        ) from err
    finally:
        dist.destroy_process_group()


def _is_collective_failure(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return any(s in text for s in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def make_trainer(loop: LoopSettings, units: list[SAEUnit], placement: str = "replicate") -> Trainer:
    """A plain `Trainer` in one process; under torchrun the variant for `placement`
    (`replicate`, `shard` or `features`, the setting `sae_placement`)."""
    rank, world = rank_and_world()
    if world == 1:
        return Trainer(loop, units)
    if placement == "features":  # one CLT, its features split across the ranks
        from saekit.training.clt_placement import FeatureShardedTrainer

        return FeatureShardedTrainer(loop, units, rank=rank, world=world)
    if placement == "shard":
        if len(units) < world:
            raise ValueError(
                f"--sae-placement shard needs at least one SAE per rank: {len(units)} SAE(s) "
                f"for {world} ranks; use --sae-placement replicate"
            )
    else:
        if loop.batch_tokens % world:
            raise ValueError(f"batch_tokens={loop.batch_tokens} must be divisible by {world} ranks")
        for unit in units:
            if isinstance(getattr(unit.sae, "cfg", None), MultisiteConfig):
                raise ValueError(
                    f"{unit.sae.cfg.LABEL} {unit.name!r} sums one FVU per layer or hook, which "
                    "per-rank slices of the batch cannot rescale exactly; under torchrun train "
                    "a CLT with --sae-placement features, a crosscoder in one process"
                )
            ghost = unit.use_dead_mask and unit.sae.dead_feature_loss == "ghost_grads"
            if unit.sae.batch_dependent or ghost:
                why = "uses ghost grads" if ghost else "chooses activations over the whole batch"
                raise ValueError(
                    f"SAE {unit.name!r} {why}, which per-rank slices of the batch cannot "
                    f"reproduce exactly; use --sae-placement shard (whole batch per SAE)"
                )
    variant = ShardedTrainer if placement == "shard" else ReplicatedTrainer
    return variant(loop, units, rank=rank, world=world)


def collect(trainer: Trainer) -> bool:
    """Bring every SAE's final state to rank 0; True in the process that writes results."""
    if isinstance(trainer, RankTrainer):
        trainer.collect()
    return is_main()

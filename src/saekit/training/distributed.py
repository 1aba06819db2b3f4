"""Data-parallel training on torch.distributed, launched by torchrun (gloo on CPU, NCCL on CUDA).

Every rank runs the model forward on every `world`-th chunk of the activation stream and the
chunks are all-gathered, so each rank sees the stream a single process would see and keeps
an identical shuffle buffer: batches, checkpoints and resume are those of one process.
- `replicate` (default): rank r trains every SAE on rows [r*b, (r+1)*b) of each global batch
  (b = batch_tokens / world). Each rank's loss is rescaled so that the mean over ranks is the
  loss of the global batch (FVU divides by the GLOBAL batch variance, merged from per-rank
  means and sums of squares); gradients are summed and divided by world (one all_reduce per
  SAE); firing counts are summed, so dead-feature masks agree on every rank.
- `shard`: SAE i is trained by rank i % world on the whole global batch (sweeps).
Only rank 0 writes files, logs and progress.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from saekit.training.config import TrainConfig
from saekit.training.dead import FiringStats
from saekit.training.trainer import Batch, Callbacks, SAEUnit, Trainer

Acts = dict[str, Tensor]


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died or hangs."""


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def process_group(cfg: TrainConfig, device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group (if launched by it) and yield this rank's device.

    NCCL for CUDA devices, gloo otherwise; every collective times out after
    `cfg.dist_timeout` seconds. A failed collective becomes a `DistributedError`.
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
        timeout=datetime.timedelta(seconds=cfg.dist_timeout),
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
            f"for more than --dist-timeout={cfg.dist_timeout}s; see that rank's error above."
        ) from err
    finally:
        dist.destroy_process_group()


def _is_collective_failure(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return any(s in text for s in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


# ---- the activation stream -------------------------------------------------------------


class RankStridedSource:
    """Wrap an activation source: rank r computes chunks r, r+world, ... and skips the rest;
    all ranks all-gather them and hand them out in stream order, one chunk at a time, so a
    `ShuffleBuffer` over this source behaves exactly as over the plain source in one process.

    The source needs `hooks`, `dims`, `skip()`, `state_dict()` and `load_state_dict()`
    (`ActivationSource` and `CachedActivations` have them).
    """

    def __init__(self, source: Any, device: torch.device) -> None:
        self.source = source
        self.device = device
        self.rank, self.world = rank_and_world()
        self._queue: list[Acts] = []
        self._exhausted = False

    def __iter__(self) -> RankStridedSource:
        return self

    def __next__(self) -> Acts:
        if not self._queue and not self._exhausted:
            self._gather_round()
        if not self._queue:
            raise StopIteration
        return self._queue.pop(0)

    def _gather_round(self) -> None:
        mine = None
        for r in range(self.world):
            if r == self.rank:
                mine = next(self.source, None)
            else:
                self.source.skip()
        hooks = list(self.source.hooks)
        widths = [int(self.source.dims[h]) for h in hooks]
        flat_ND = (
            torch.cat([mine[h].float() for h in hooks], dim=1).to(self.device)
            if mine is not None
            else torch.zeros(0, sum(widths), device=self.device)
        )
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world)]
        n = torch.tensor([flat_ND.shape[0] if mine is not None else -1], device=self.device)
        dist.all_gather(sizes, n)
        counts = [int(s.item()) for s in sizes]
        longest = max(max(counts), 1)
        padded_ND = torch.zeros(longest, flat_ND.shape[1], device=self.device)
        padded_ND[: flat_ND.shape[0]] = flat_ND
        parts = [torch.empty_like(padded_ND) for _ in range(self.world)]
        dist.all_gather(parts, padded_ND)
        for count, part in zip(counts, parts, strict=True):
            if count < 0:
                self._exhausted = True
                break
            self._queue.append(dict(zip(hooks, part[:count].split(widths, dim=1), strict=True)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "source": self.source.state_dict(),
            "queue": [{h: t.cpu() for h, t in chunk.items()} for chunk in self._queue],
            "exhausted": self._exhausted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["source"])
        self._queue = [{h: t.to(self.device) for h, t in c.items()} for c in state["queue"]]
        self._exhausted = bool(state["exhausted"])


def strided_source(source: Any, device: torch.device) -> Any:
    """The source itself in one process; a `RankStridedSource` under torchrun."""
    return source if rank_and_world()[1] == 1 else RankStridedSource(source, device)


# ---- the trainer -----------------------------------------------------------------------


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


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


@dataclass
class DistributedTrainer(Trainer):
    """`Trainer` whose SAEs are replicated (data-parallel) or sharded over the ranks."""

    placement: str = "replicate"
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.placement == "replicate":
            for unit in self.units:
                summed = SummedFiringStats(
                    unit.firing.tokens_since_fired_F.numel(), unit.firing.dead_after_tokens,
                    unit.firing.tokens_since_fired_F.device,
                )  # fmt: skip
                summed.load_state_dict(unit.firing.state_dict())
                unit.firing = summed

    def owner(self, index: int) -> int:
        """The rank that trains unit `index` (every rank under replicate: -1)."""
        return index % self.world if self.placement == "shard" else -1

    def _owns(self, unit: SAEUnit) -> bool:
        return self.owner(self.units.index(unit)) in (-1, self.rank)

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
        """Shard placement: bring every SAE's state to rank 0 (for checkpoints, evals, saving)."""
        if self.placement != "shard":
            return
        mine = {u.name: _to_cpu(u.state_dict()) for u in self.units if self._owns(u)}
        parts: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if self.rank == 0:
            assert parts is not None
            for unit in self.units:
                if not self._owns(unit):
                    state = next(p[unit.name] for p in parts if unit.name in p)
                    unit.load_state_dict(state)
                    if unit.last_density_F is not None:
                        unit.last_density_F = unit.last_density_F.to(
                            unit.firing.window_counts_F.device
                        )

    def _train_unit(self, unit: SAEUnit, batch: Batch) -> dict[str, float]:
        if self.placement == "shard":
            return super()._train_unit(unit, batch) if self._owns(unit) else {}
        rows = next(iter(batch.values())).shape[0] // self.world
        lo = self.rank * rows
        return super()._train_unit(unit, {h: t[lo : lo + rows] for h, t in batch.items()})

    def _global_loss(self, unit: SAEUnit, out, target_BD: Tensor):
        """Replicate: rescale each FVU term by local/global batch variance, so the mean over
        ranks of every loss part is that part on the global batch."""
        if self.placement == "shard":
            return out
        ratio = _global_variance_ratio(target_BD)
        aux_ratio = ratio  # gated's aux term is an FVU of the target too
        dead = unit.use_dead_mask and bool(unit.firing.dead_mask().any())
        if dead and unit.sae.dead_feature_loss == "auxk":  # FVU of the (detached) residual
            aux_ratio = _global_variance_ratio(target_BD - out.sae_out.detach())
        mse, aux = out.mse_loss * ratio, out.aux_loss * aux_ratio
        return out._replace(loss=mse + out.sparsity_loss + aux, mse_loss=mse, aux_loss=aux)

    def _reduce_gradients(self, unit: SAEUnit) -> None:
        if self.placement == "shard":
            return
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
        if self.placement == "shard":
            return values
        dist.all_reduce(values)
        return values / self.world

    def _with_firing(self, metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        metrics = super()._with_firing(metrics)
        if self.placement != "shard":
            return metrics
        parts: list[Any] = [None] * self.world
        mine = {u.name: metrics[u.name] for u in self.units if self._owns(u)}
        dist.all_gather_object(parts, mine)
        merged = {name: m for part in parts for name, m in part.items()}
        return {u.name: merged[u.name] for u in self.units}

    def _resample(self, unit: SAEUnit, batch: Batch) -> None:
        if self._owns(unit):  # replicate: every rank, on the same global batch
            super()._resample(unit, batch)

    def _agree(self, flag: bool) -> bool:
        """Rank 0's clock decides a time-based checkpoint for every rank."""
        device = self.units[0].firing.window_counts_F.device
        value = torch.tensor([int(flag)], device=device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def _stopping(self) -> bool:
        """A stop signal on any rank stops every rank at the same step."""
        device = self.units[0].firing.window_counts_F.device
        flag = torch.tensor([self._stop_signal or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag.item()):
            self._stop_signal = int(flag.item())
        return self._stop_signal is not None


def _ignore(*args: Any) -> None:
    """A callback for ranks other than 0 that must still take part in its collectives."""


def make_trainer(cfg: TrainConfig, units: list[SAEUnit]) -> Trainer:
    """A plain `Trainer` in one process, a `DistributedTrainer` under torchrun."""
    rank, world = rank_and_world()
    if world == 1:
        return Trainer(cfg, units)
    if cfg.sae_placement == "shard":
        if len(units) < world:
            raise ValueError(
                f"--sae-placement shard needs at least one SAE per rank: {len(units)} SAE(s) "
                f"for {world} ranks; use --sae-placement replicate"
            )
    else:
        if cfg.batch_tokens % world:
            raise ValueError(f"batch_tokens={cfg.batch_tokens} must be divisible by {world} ranks")
        for unit in units:
            ghost = unit.use_dead_mask and unit.sae.dead_feature_loss == "ghost_grads"
            if unit.sae.batch_dependent or ghost:
                why = "uses ghost grads" if ghost else "chooses activations over the whole batch"
                raise ValueError(
                    f"SAE {unit.name!r} {why}, which per-rank slices of the batch cannot "
                    f"reproduce exactly; use --sae-placement shard (whole batch per SAE)"
                )
    return DistributedTrainer(cfg, units, placement=cfg.sae_placement, rank=rank, world=world)


def collect(trainer: Trainer) -> bool:
    """Bring every SAE's final state to rank 0; True in the process that writes results."""
    if isinstance(trainer, DistributedTrainer):
        trainer.collect()
    return is_main()

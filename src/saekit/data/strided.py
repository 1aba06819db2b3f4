"""An activation source split across torchrun ranks that still yields one process's stream."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from saekit.ranks import rank_and_world

Acts = dict[str, Tensor]


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

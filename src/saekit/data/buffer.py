"""A shuffle buffer: mixes activation chunks from a source into random fixed-size batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

Acts = dict[str, torch.Tensor]  # hook -> Tensor[N, D]; the same N rows for every hook


def _cat(parts: list[Acts]) -> Acts:
    """Concatenate chunks row-wise (on the device of the last chunk)."""
    device = next(iter(parts[-1].values())).device
    return {h: torch.cat([p[h].to(device) for p in parts]) for h in parts[-1]}


def _to(acts: Acts, device: str | torch.device) -> Acts:
    return {h: t.to(device) for h, t in acts.items()}


def _rows(acts: Acts | None) -> int:
    return 0 if not acts else next(iter(acts.values())).shape[0]


class ShuffleBuffer:
    """Iterator of shuffled batches ``dict[hook, Tensor[batch_tokens, D]]``.

    It pulls chunks from ``source`` until it holds ``buffer_tokens`` rows, shuffles them with a
    generator seeded by ``seed``, and hands out batches until half of the buffer is left; the
    kept half is mixed with the next chunks. Memory stays below ``buffer_tokens`` plus one
    chunk. When the source is exhausted the rest is shuffled and handed out; fewer than
    ``batch_tokens`` leftover rows are dropped and iteration stops. All hooks share one
    permutation, so row i of every hook comes from the same token. Batches live on ``device``
    (default: the source's ``device``, e.g. the model's), also after ``load_state_dict``.
    """

    def __init__(
        self,
        source: Iterable[Acts],
        buffer_tokens: int,
        batch_tokens: int,
        seed: int = 0,
        *,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_tokens < 1 or buffer_tokens < 2 * batch_tokens:
            raise ValueError(
                f"need buffer_tokens >= 2 * batch_tokens >= 2, got buffer_tokens={buffer_tokens}, "
                f"batch_tokens={batch_tokens}"
            )
        self.source = source
        # Where batches live; None: the source's `device` attribute, else each chunk's device.
        self.device = device if device is not None else getattr(source, "device", None)
        self.buffer_tokens = buffer_tokens
        self.batch_tokens = batch_tokens
        self._rng = torch.Generator().manual_seed(seed)
        self._source_it = None
        self._store: Acts | None = None  # its first `_ready` rows are shuffled, ready to go
        self._pending: list[Acts] = []  # chunks pulled but not yet merged into the store
        self._ready = 0
        self._exhausted = False

    def __iter__(self) -> ShuffleBuffer:
        return self

    def __next__(self) -> Acts:
        while self._ready < self.batch_tokens:
            if self._exhausted and self._ready >= _rows(self._store):
                raise StopIteration  # everything left is handed out (or under one batch)
            self._refill()
        b = self.batch_tokens
        assert self._store is not None
        batch = {h: t[:b] for h, t in self._store.items()}
        self._store = {h: t[b:] for h, t in self._store.items()}
        self._ready -= b
        return batch

    def peek(self, n_tokens: int) -> Acts:
        """A copy of ``n_tokens`` rows (the next ones in the buffer), without consuming them.

        Use it before training for the decoder-bias init and the activation scale. Fewer rows
        come back only if the source holds fewer.
        """
        while self._held() < n_tokens and self._pull():
            pass
        self._merge()
        if self._store is None:
            raise ValueError("the activation source is empty")
        return {h: t[:n_tokens].clone() for h, t in self._store.items()}

    def state_dict(self) -> dict[str, Any]:
        """Buffer contents (on CPU), RNG state and the source's position."""
        self._merge()
        store = {} if self._store is None else {h: t.cpu() for h, t in self._store.items()}
        return {
            "store": store,
            "ready": self._ready,
            "exhausted": self._exhausted,
            "rng": self._rng.get_state(),
            "source": self.source.state_dict(),  # type: ignore[attr-defined]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state_dict()`` was taken (over the same source)."""
        self.source.load_state_dict(state["source"])  # type: ignore[attr-defined]
        self._source_it = None
        self._store = {h: t.to(self.device or t.device) for h, t in state["store"].items()} or None
        self._pending = []
        self._ready = int(state["ready"])
        self._exhausted = bool(state["exhausted"])
        self._rng.set_state(state["rng"])

    def _held(self) -> int:
        return _rows(self._store) + sum(_rows(p) for p in self._pending)

    def _pull(self) -> bool:
        """Pull one chunk from the source; False once it is exhausted."""
        if self._exhausted:
            return False
        if self._source_it is None:
            self._source_it = iter(self.source)
        chunk = next(self._source_it, None)
        if chunk is None:
            self._exhausted = True
            return False
        if _rows(chunk):
            self._pending.append(chunk if self.device is None else _to(chunk, self.device))
        return True

    def _merge(self) -> None:
        if self._pending:
            self._store = _cat(([self._store] if self._store else []) + self._pending)
            self._pending = []

    def _refill(self) -> None:
        while self._held() < self.buffer_tokens and self._pull():
            pass
        self._merge()
        n = _rows(self._store)
        if n == 0:
            return
        assert self._store is not None
        perm = torch.randperm(n, generator=self._rng)
        self._store = {h: t[perm.to(t.device)] for h, t in self._store.items()}
        self._ready = n if self._exhausted else n - self.buffer_tokens // 2

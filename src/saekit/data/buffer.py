"""A shuffle buffer: mixes activation chunks from a source into random fixed-size batches."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

Acts = dict[str, Tensor]  # hook -> Tensor[N, D]; the same N rows for every hook


def _to(acts: Acts, device: str | torch.device) -> Acts:
    return {h: t.to(device) for h, t in acts.items()}


def _rows(acts: Acts | None) -> int:
    return 0 if not acts else next(iter(acts.values())).shape[0]


def _grown(store: Acts, rows: int) -> Acts:
    """`store` with zero rows appended up to `rows`."""
    return {
        h: torch.cat([t, t.new_zeros((rows - t.shape[0], *t.shape[1:]))]) for h, t in store.items()
    }


class ShuffleBuffer:
    """Iterator of shuffled batches ``dict[hook, Tensor[batch_tokens, D]]``.

    It holds ``buffer_tokens`` rows in one preallocated tensor per hook (the store) and fills it
    from ``source`` in place. Once full, it draws a random order of the rows with a generator
    seeded by ``seed`` and hands out batches in that order (each batch a gathered copy) until
    half of the buffer is left; the freed slots are then refilled from the source and the
    order drawn again over every row held, so the kept half mixes with the new rows. Memory:
    the store plus at most one chunk (the part of the last chunk that did not fit) and one
    batch; no refill copies the store. When the source is exhausted the rest is handed out;
    fewer than ``batch_tokens`` leftover rows are dropped and iteration stops. All hooks share
    one order, so row i of every hook comes from the same token. Batches live on ``device``
    (default: the source's ``device``, e.g. the model's), also after ``load_state_dict``.

    Batches depend only on the seed and the source's chunks. They come in another order than
    from the earlier buffer, which concatenated and permuted copies of the whole buffer at each
    refill (about 3.5 buffers at the peak); a state saved by that buffer still resumes.
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
        self._store: Acts | None = None  # hook -> [capacity, D]
        self._free = torch.zeros(0, dtype=torch.long)  # slots holding no row
        self._filled = 0  # slots ever written (rows past it are free too)
        self._order = torch.zeros(0, dtype=torch.long)  # slots to hand out, in order
        self._pos = 0  # how many of them went out (their slots are free)
        self._pending: Acts | None = None  # the part of a chunk that did not fit
        self._exhausted = False

    def __iter__(self) -> ShuffleBuffer:
        return self

    def __next__(self) -> Acts:
        if self._order.numel() - self._pos < self.batch_tokens:
            self._refill()
            if self._order.numel() < self.batch_tokens:
                raise StopIteration  # everything left is handed out (or under one batch)
        slots = self._order[self._pos : self._pos + self.batch_tokens]
        self._pos += self.batch_tokens
        assert self._store is not None
        return {h: t.index_select(0, slots.to(t.device)) for h, t in self._store.items()}

    def peek(self, n_tokens: int) -> Acts:
        """A copy of ``n_tokens`` rows (the next ones in the buffer), without consuming them.

        Use it before training for the decoder-bias init and the activation scale (then the
        rows come in stream order; only the chunks needed are pulled, and the store grows to
        ``n_tokens`` rows if it is smaller).
        Fewer rows come back only if the source holds fewer.
        """
        self._fill(max(n_tokens, self.buffer_tokens), rows=n_tokens)
        if self._store is None:
            raise ValueError("the activation source is empty")
        self._settle()
        held = torch.ones(self._filled, dtype=torch.bool)
        held[self._free] = False
        held[self._order] = False
        slots = torch.cat([self._order, held.nonzero().flatten()])[:n_tokens]
        return {h: t.index_select(0, slots.to(t.device)) for h, t in self._store.items()}

    def state_dict(self) -> dict[str, Any]:
        """The store (on CPU), which slots hold rows and in what order they go out, the RNG
        state and the source's position."""
        cpu = lambda acts: {} if acts is None else {h: t.cpu() for h, t in acts.items()}  # noqa: E731
        self._settle()
        return {
            "store": cpu(self._store),
            "free": self._free.clone(),
            "filled": self._filled,
            "order": self._order.clone(),
            "pending": cpu(self._pending),
            "exhausted": self._exhausted,
            "rng": self._rng.get_state(),
            "source": self.source.state_dict(),  # type: ignore[attr-defined]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state_dict()`` was taken (over the same source)."""
        self.source.load_state_dict(state["source"])  # type: ignore[attr-defined]
        self._source_it = None
        place = lambda acts: {h: t.to(self.device or t.device) for h, t in acts.items()} or None  # noqa: E731
        self._store = place(state["store"])
        if "order" not in state:  # saved by the earlier buffer: the first `ready` rows shuffled
            n = _rows(self._store)
            if self._store is not None and n < self.buffer_tokens:
                self._store = _grown(self._store, self.buffer_tokens)
            state = {**state, "free": torch.zeros(0, dtype=torch.long), "filled": n,
                     "order": torch.arange(int(state["ready"])), "pending": {}}  # fmt: skip
        self._free = state["free"].clone()
        self._filled = int(state["filled"])
        self._order = state["order"].clone()
        self._pos = 0
        self._pending = place(state["pending"])
        self._exhausted = bool(state["exhausted"])
        self._rng.set_state(state["rng"])

    def _pull(self) -> Acts | None:
        """The pending rows, else the next non-empty chunk; None once the source is exhausted."""
        if self._pending is not None:
            chunk, self._pending = self._pending, None
            return chunk
        if self._source_it is None:
            self._source_it = iter(self.source)
        while not self._exhausted:
            chunk = next(self._source_it, None)
            if chunk is None:
                self._exhausted = True
            elif _rows(chunk):
                return chunk if self.device is None else _to(chunk, self.device)
        return None

    def _fill(self, capacity: int, rows: int | None = None) -> None:
        """Write rows from the source into the free slots (allocating `capacity` slots first),
        until none is free or, given `rows`, that many rows are held."""
        if self._store is not None and capacity > self._capacity:  # `peek` beyond the store
            self._store = _grown(self._store, capacity)
        while rows is None or self._filled - self._free.numel() < rows:
            room = (capacity if self._store is None else self._capacity) - self._filled
            if self._free.numel() == 0 and room == 0:
                return
            chunk = self._pull()
            if chunk is None:
                return
            if self._store is None:
                self._store = {
                    h: t.new_zeros((capacity, *t.shape[1:])) for h, t in chunk.items()
                }  # fmt: skip
            n = _rows(chunk)
            slots = torch.cat([self._free, torch.arange(self._filled, self._filled + room)])[:n]
            self._free = self._free[slots.numel() :]
            self._filled = max(self._filled, int(slots.max()) + 1)
            for h, t in self._store.items():
                t.index_copy_(0, slots.to(t.device), chunk[h][: slots.numel()].to(t.dtype))
            if slots.numel() < n:
                self._pending = {h: c[slots.numel() :] for h, c in chunk.items()}

    @property
    def _capacity(self) -> int:
        return _rows(self._store)

    def _settle(self) -> None:
        """Mark the slots handed out as free (in the order they went out)."""
        self._free = torch.cat([self._free, self._order[: self._pos]])
        self._order, self._pos = self._order[self._pos :], 0

    def _refill(self) -> None:
        """Fill the free slots, then draw the order of every row held; all of them go out once
        the source is exhausted, else all but half a buffer."""
        self._settle()
        self._fill(self.buffer_tokens)
        held = torch.ones(self._filled, dtype=torch.bool)
        held[self._free] = False
        slots = held.nonzero().flatten()
        n = slots.numel()
        order = slots[torch.randperm(n, generator=self._rng)]
        keep = 0 if self._exhausted and self._pending is None else self._capacity // 2
        self._order = order[: max(0, n - keep)]

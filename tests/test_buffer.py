"""ShuffleBuffer: every row once, aligned hooks, determinism, exact resume, memory bound."""

from __future__ import annotations

import pytest
import torch

from saekit.data import ShuffleBuffer

CHUNK_SIZES = [7, 13, 5, 20, 11, 9, 16, 3, 12, 8] * 3  # 312 rows in all


class CountingSource:
    """Chunks of rows whose value is their stream index (hook `b` holds minus it)."""

    def __init__(self, sizes=CHUNK_SIZES):
        self.sizes, self.done = sizes, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.done >= len(self.sizes):
            raise StopIteration
        start = sum(self.sizes[: self.done])
        idx = torch.arange(start, start + self.sizes[self.done], dtype=torch.float32)
        self.done += 1
        return {"a": idx[:, None].repeat(1, 3), "b": -idx[:, None].repeat(1, 2)}

    def state_dict(self):
        return {"done": self.done}

    def load_state_dict(self, state):
        self.done = state["done"]


def _ids(batches):
    return [int(v) for b in batches for v in b["a"][:, 0]]


def test_every_row_once_hooks_aligned_and_shuffled():
    batches = list(ShuffleBuffer(CountingSource(), buffer_tokens=64, batch_tokens=10, seed=0))
    assert all(b["a"].shape == (10, 3) and b["b"].shape == (10, 2) for b in batches)
    for b in batches:
        assert torch.equal(b["b"][:, 0], -b["a"][:, 0])
    ids = _ids(batches)
    assert len(ids) == 310 and len(set(ids)) == 310  # of 312 rows; 2 left over at the end
    assert ids != sorted(ids)
    # the kept half mixes old rows with new ones: the first batches reach past chunk 1
    assert max(ids[:10]) >= 7


def test_deterministic_by_seed():
    run = lambda seed: _ids(ShuffleBuffer(CountingSource(), 64, 10, seed=seed))  # noqa: E731
    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("k", [0, 1, 5, 17, 30, 31])
def test_resume_gives_exactly_the_remaining_batches(k):
    full = list(ShuffleBuffer(CountingSource(), 64, 10, seed=3))
    first = ShuffleBuffer(CountingSource(), 64, 10, seed=3)
    head = [next(first) for _ in range(k)]
    state = first.state_dict()
    resumed = ShuffleBuffer(CountingSource(), 64, 10, seed=99)  # seed comes from the state
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(head) + len(rest) == len(full)
    for got, want in zip(head + rest, full, strict=True):
        assert torch.equal(got["a"], want["a"]) and torch.equal(got["b"], want["b"])


def test_memory_stays_within_buffer_plus_one_chunk():
    buf = ShuffleBuffer(CountingSource(), buffer_tokens=48, batch_tokens=8, seed=0)
    for _ in buf:
        held = buf.state_dict()["store"]["a"].shape[0]
        assert held <= 48 + max(CHUNK_SIZES)


def test_peek_samples_without_consuming():
    buf = ShuffleBuffer(CountingSource(), 64, 10, seed=0)
    sample = buf.peek(30)
    assert sample["a"].shape == (30, 3)
    assert sorted(int(v) for v in sample["a"][:, 0]) == list(range(30))
    ids = _ids(buf)
    assert len(set(ids)) == 310 and set(range(30)) <= set(ids)


def test_bad_sizes():
    with pytest.raises(ValueError, match="buffer_tokens >= 2 \\* batch_tokens"):
        ShuffleBuffer(CountingSource(), buffer_tokens=15, batch_tokens=10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resumed_batches_stay_on_the_source_device():
    class CudaSource(CountingSource):
        device = torch.device("cuda")

        def __next__(self):
            return {h: t.cuda() for h, t in super().__next__().items()}

    full = list(ShuffleBuffer(CudaSource(), 64, 10, seed=3))
    first = ShuffleBuffer(CudaSource(), 64, 10, seed=3)
    head = [next(first) for _ in range(7)]
    resumed = ShuffleBuffer(CudaSource(), 64, 10, seed=3)
    resumed.load_state_dict(first.state_dict())
    for got, want in zip(head + list(resumed), full, strict=True):
        assert got["a"].is_cuda and torch.equal(got["a"], want["a"])


def test_limited_source_stops_after_the_budget_and_resumes():
    from saekit.data.activations import LimitedSource

    class Counting:
        def __init__(self):
            self.i = 0

        def __next__(self):
            self.i += 1
            return {"h": torch.full((3, 2), float(self.i))}

        def state_dict(self):
            return {"i": self.i}

        def load_state_dict(self, state):
            self.i = state["i"]

    counting = Counting()
    counting.device = torch.device("meta")
    assert LimitedSource(counting, max_rows=7).device == torch.device("meta")  # buffer restores there
    limited = LimitedSource(Counting(), max_rows=7)
    first = next(limited)
    state = limited.state_dict()
    rest = list(limited)
    assert [c["h"][0, 0].item() for c in [first, *rest]] == [1.0, 2.0, 3.0]  # 9 rows >= 7
    again = LimitedSource(Counting(), max_rows=7)
    again.load_state_dict(state)
    assert [c["h"][0, 0].item() for c in again] == [2.0, 3.0]


def test_a_source_exhausted_by_peek_is_still_handed_out_whole():
    chunks = [{"h": torch.arange(i * 4, i * 4 + 4, dtype=torch.float32)[:, None]} for i in range(3)]
    buffer = ShuffleBuffer(iter(chunks), buffer_tokens=64, batch_tokens=4, seed=0)
    assert buffer.peek(32)["h"].shape == (12, 1)  # the source ran dry while peeking
    rows = torch.cat([b["h"] for b in buffer]).flatten()
    assert sorted(rows.tolist()) == list(range(12))


def test_refills_write_into_one_store_in_place():
    """The store is allocated once at buffer_tokens rows; refills and batches never copy it."""
    buf = ShuffleBuffer(CountingSource(), buffer_tokens=64, batch_tokens=8, seed=0)
    first = next(buf)
    store = buf.state_dict()["store"]["a"]
    assert store.shape == (64, 3)
    pointer = buf._store["a"].data_ptr()
    rest = list(buf)
    assert buf._store["a"].data_ptr() == pointer
    ids = _ids([first, *rest])
    assert len(ids) == len(set(ids)) == 312 // 8 * 8  # every row at most once, 0 left over


def test_peek_pulls_only_what_it_needs_and_may_grow_the_store():
    source = CountingSource()
    buf = ShuffleBuffer(source, buffer_tokens=32, batch_tokens=8, seed=0)
    assert buf.peek(10)["a"].shape == (10, 3)
    assert source.done == 2  # chunks of 7 and 13 rows: no more forwards than needed
    sample = buf.peek(50)
    assert sorted(int(v) for v in sample["a"][:, 0]) == list(range(50))
    ids = _ids(buf)
    assert len(ids) == len(set(ids)) == 312 and set(range(50)) <= set(ids)


def test_a_state_saved_before_in_place_refills_still_resumes():
    """The earlier format: `store` rows whose first `ready` were shuffled, then the kept rows."""
    source = CountingSource()
    for _ in range(4):  # rows 0..44 were pulled
        next(source)
    rows = torch.arange(45, dtype=torch.float32)[torch.randperm(45)]
    state = {
        "store": {"a": rows[:, None].repeat(1, 3), "b": -rows[:, None].repeat(1, 2)},
        "ready": 20, "exhausted": False, "rng": torch.Generator().manual_seed(1).get_state(),
        "source": source.state_dict(),
    }  # fmt: skip
    buf = ShuffleBuffer(CountingSource(), 64, 10, seed=0)
    buf.load_state_dict(state)
    batches = list(buf)
    assert _ids(batches[:2]) == [int(v) for v in rows[:20]]  # the ready rows first, in order
    ids = _ids(batches)
    assert len(ids) == len(set(ids)) == 310  # every row once
    for b in batches:
        assert torch.equal(b["b"][:, 0], -b["a"][:, 0])


def stated_order(sizes: list[int], capacity: int, batch: int, seed: int) -> list[list[int]]:
    """The batches the class docstring states, by plain list bookkeeping: rows fill the free
    slots (freed slots first, in the order they went out, then unwritten ones upwards); at
    each refill the slots holding rows, in increasing order, are permuted by
    `torch.randperm(n, generator)`; all but `capacity // 2` of them go out (all once the
    source is dry); a chunk's rows that do not fit wait for the next refill."""
    gen = torch.Generator().manual_seed(seed)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    chunks = [list(range(s, s + n)) for s, n in zip(starts, sizes, strict=True)]
    row_at: dict[int, int] = {}
    free: list[int] = []
    state = {"filled": 0, "next": 0, "pending": [], "dry": False}
    order: list[int] = []
    batches = []

    def fill() -> None:
        while free or state["filled"] < capacity:
            if state["pending"]:
                chunk, state["pending"] = state["pending"], []
            elif state["next"] < len(chunks):
                chunk, state["next"] = chunks[state["next"]], state["next"] + 1
            else:
                state["dry"] = True
                return
            slots = (free + list(range(state["filled"], capacity)))[: len(chunk)]
            del free[: len(slots)]
            state["filled"] = max(state["filled"], max(slots) + 1)
            row_at.update(zip(slots, chunk, strict=False))
            state["pending"] = chunk[len(slots) :]

    while True:
        if len(order) < batch:
            fill()
            held = sorted(row_at)
            drawn = [held[i] for i in torch.randperm(len(held), generator=gen).tolist()]
            keep = 0 if state["dry"] and not state["pending"] else capacity // 2
            order = drawn[: max(0, len(drawn) - keep)]
            if len(order) < batch:
                return batches
        taken, order = order[:batch], order[batch:]
        batches.append([row_at.pop(slot) for slot in taken])
        free.extend(taken)


@pytest.mark.parametrize(
    "sizes, capacity, batch, seed",
    [(CHUNK_SIZES, 64, 10, 0), (CHUNK_SIZES, 48, 8, 5), ([40, 1, 33, 64, 2] * 4, 32, 16, 2)],
)
def test_batches_come_in_the_stated_order(sizes, capacity, batch, seed):
    got = [
        [int(v) for v in b["a"][:, 0]]
        for b in ShuffleBuffer(CountingSource(sizes), capacity, batch, seed=seed)
    ]
    assert got == stated_order(sizes, capacity, batch, seed)

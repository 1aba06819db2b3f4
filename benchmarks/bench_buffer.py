"""Peak memory and speed of the shuffle buffer on random activations (no model).

    python benchmarks/bench_buffer.py --buffer 262144            # the saekit on sys.path
    PYTHONPATH=/path/to/old/src python benchmarks/bench_buffer.py  # another version's buffer

A source yields chunks of `--chunk` rows of width `--width` (float32 random numbers, as
`ActivationSource` yields one forward's kept tokens); the buffer hands out `--batches` batches.
The script prints the process's peak RSS above what it held before the buffer started (the
source's generator and torch itself), in MB and in buffers, and the time per batch and per
refill. Run it once per version: peak RSS is a per-process figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


class RandomSource:
    """Chunks of random activations, deterministic by seed, with a resumable position."""

    def __init__(self, chunk: int, width: int) -> None:
        self.chunk, self.width, self.done = chunk, width, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        self.done += 1
        gen = torch.Generator().manual_seed(self.done)
        return {"h": torch.randn(self.chunk, self.width, generator=gen)}

    def state_dict(self) -> dict[str, int]:
        return {"done": self.done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.done = state["done"]


def rss_mb() -> float:
    """The current resident set size in MB (from /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buffer", type=int, default=262_144, help="buffer_tokens")
    parser.add_argument("--batch", type=int, default=4096, help="batch_tokens")
    parser.add_argument("--chunk", type=int, default=4064, help="rows per source chunk")
    parser.add_argument("--width", type=int, default=576, help="activation width D")
    parser.add_argument("--batches", type=int, default=200, help="batches to hand out")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    args = parser.parse_args()

    import saekit
    from saekit.data import ShuffleBuffer

    torch.set_num_threads(1)
    next(RandomSource(args.chunk, args.width))  # warm up torch's allocator and RNG
    before = rss_mb()
    buffer = ShuffleBuffer(RandomSource(args.chunk, args.width), args.buffer, args.batch, seed=0)
    times = []
    for _ in range(args.batches):
        start = time.perf_counter()
        batch = next(buffer)
        times.append(time.perf_counter() - start)
        del batch
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB on Linux
    buffer_mb = args.buffer * args.width * 4 / 2**20
    slow = sorted(times)[-max(1, len(times) // 20) :]  # the refills
    result = {
        "saekit": saekit.__file__, "buffer_tokens": args.buffer, "width": args.width,
        "buffer_mb": round(buffer_mb, 1), "rss_before_mb": round(before, 1),
        "peak_above_before_mb": round(peak - before, 1),
        "peak_in_buffers": round((peak - before) / buffer_mb, 2),
        "median_batch_ms": round(1000 * sorted(times)[len(times) // 2], 2),
        "slowest_batches_ms": [round(1000 * t) for t in slow],
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

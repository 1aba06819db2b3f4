"""Time per token of `run_to_hooks` for hooks at several depths vs a full forward.

    python benchmarks/bench_hook_depth.py                       # smollm2-135m, cpu
    python benchmarks/bench_hook_depth.py --device cuda --batch 32 --ctx 256

The forward stops right after the last hooked module, so an early hook should cost about
(layer / n_layers) of a full forward (plus the embedding); the full forward includes the
unembedding ([T, 576] x [576, 49152] for smollm2), which is a large share on small models.
"""

from __future__ import annotations

import argparse
import time

import torch

from saekit.models import load_model


def timed(fn, repeats: int, sync) -> float:
    """Best wall time of `repeats` calls, in seconds (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=int, nargs="*", help="hook layers (default: spread)")
    args = parser.parse_args()

    lm = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    n = lm.n_layers
    layers = args.layers or sorted({0, 1, n // 4, n // 2, 3 * n // 4, n - 1, n})
    vocab = lm.unembed_matrix().shape[1]
    ids_BT = torch.randint(
        0, vocab, (args.batch, args.ctx), generator=torch.Generator().manual_seed(0)
    )
    ids_BT = ids_BT.to(lm.device)
    tokens = ids_BT.numel()
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)

    def full_forward():
        with torch.inference_mode():
            lm.logits(ids_BT)

    def all_hidden_states():  # the naive way: a full forward that keeps every layer's output
        with torch.inference_mode():
            lm.model(ids_BT, output_hidden_states=True, use_cache=False)

    full = timed(full_forward, args.repeats, sync)
    rows = [(f"blocks.{layer}.hook_resid_pre", layer) for layer in layers]
    print(f"{lm!r}; batch {args.batch} x ctx {args.ctx} = {tokens} tokens; best of {args.repeats}")
    print(
        f"{'hook':<28} {'layers run':>10} {'ms/batch':>9} {'us/token':>9} {'tokens/s':>10} {'vs full':>8}"
    )
    for name, layer in rows:
        sec = timed(lambda name=name: lm.run_to_hooks(ids_BT, [name]), args.repeats, sync)
        print(
            f"{name:<28} {layer:>10} {sec * 1e3:>9.1f} {sec / tokens * 1e6:>9.2f} "
            f"{tokens / sec:>10.0f} {sec / full:>7.0%}"
        )
    naive = timed(all_hidden_states, args.repeats, sync)
    for label, sec in [("full forward (logits)", full), ("output_hidden_states=True", naive)]:
        print(
            f"{label:<28} {n:>10} {sec * 1e3:>9.1f} {sec / tokens * 1e6:>9.2f} "
            f"{tokens / sec:>10.0f} {sec / full:>7.0%}"
        )


if __name__ == "__main__":
    main()

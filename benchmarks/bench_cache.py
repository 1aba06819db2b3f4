"""Throughput of the data pipeline: live activations, shuffle buffer, cache write, cache read.

    python benchmarks/bench_cache.py                          # smollm2-135m, cpu
    python benchmarks/bench_cache.py --device cuda --tokens 500000 --rows 64
    python benchmarks/bench_cache.py --random --device cuda   # SmolLM2-135M shape, random weights

Reports tokens/s for: the live `ActivationSource` (one forward per chunk, stopped at the hook),
a `ShuffleBuffer` over it, `build_cache` (forward + safetensors + sha256 + fsync) in float32
and bfloat16, and reading the cache back through `CachedActivations` + `ShuffleBuffer`.
It also checks on the chosen device that a buffer resumed from its `state_dict()` gives the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import torch

from saekit.data import (
    ActivationSource,
    CachedActivations,
    ShuffleBuffer,
    TokenWindows,
    build_cache,
    iter_documents,
)


def random_smollm2(device: str):
    """A LanguageModel with SmolLM2-135M's shape, random weights and a small BPE tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from saekit.models import LanguageModel

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>", "<s>"],
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(itertools.islice(iter_documents("builtin:python-docs"), 400), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>"
    )
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=2048)  # fmt: skip
    torch.manual_seed(0)
    return LanguageModel(LlamaForCausalLM(cfg).to(device).eval(), tokenizer, "random-smollm2")


def rate(tokens: int, seconds: float) -> str:
    return f"{tokens / seconds:12,.0f} tok/s  ({tokens:,} tokens in {seconds:.2f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random", action="store_true", help="random SmolLM2-135M-shaped model")
    parser.add_argument("--hook", default="blocks.15.hook_resid_pre")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--rows", type=int, default=16, help="windows per forward")
    parser.add_argument("--buffer", type=int, default=2**14, help="shuffle buffer tokens")
    parser.add_argument("--batch", type=int, default=4096, help="batch tokens")
    args = parser.parse_args()

    if args.random:
        lm = random_smollm2(args.device)
    else:
        from saekit.models import load_model

        lm = load_model(args.model, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"{lm.spec} on {args.device}, hook {args.hook}, context {args.context}, rows {args.rows}")

    def source():
        docs = iter_documents("builtin:python-docs")
        return ActivationSource(lm, [args.hook], TokenWindows(docs, lm.tokenizer, args.context),
                                args.rows)  # fmt: skip

    next(source())  # warm-up
    sync()
    start, n = time.perf_counter(), 0
    for chunk in source():
        n += len(chunk[args.hook])
        if n >= args.tokens:
            break
    sync()
    print(f"live activations     {rate(n, time.perf_counter() - start)}")

    start, n = time.perf_counter(), 0
    for batch in ShuffleBuffer(source(), args.buffer, args.batch, seed=0):
        n += len(batch[args.hook])
        if n >= args.tokens:
            break
    sync()
    print(f"shuffle buffer (live) {rate(n, time.perf_counter() - start)}")

    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ["float32", "bfloat16"]:
            start = time.perf_counter()
            manifest = build_cache(
                lm, [args.hook], "builtin:python-docs", args.tokens, f"{tmp}/{dtype}",
                model_name=lm.spec, dtype=dtype, context_size=args.context,
                shard_tokens=args.buffer // 4, rows_per_forward=args.rows,
                holdout_every=0, progress=False,
            )  # fmt: skip
            print(f"cache write {dtype:9s}{rate(manifest['tokens'], time.perf_counter() - start)}")
            start, n = time.perf_counter(), 0
            cached = CachedActivations(f"{tmp}/{dtype}", device=args.device)
            for batch in ShuffleBuffer(cached, args.buffer, args.batch, seed=0):
                n += len(batch[args.hook])
            sync()
            print(f"cache read  {dtype:9s}{rate(n, time.perf_counter() - start)}")

        def buffer():
            return ShuffleBuffer(CachedActivations(f"{tmp}/float32", device=args.device),
                                 args.buffer, args.batch, seed=1)  # fmt: skip

        full = list(buffer())
        first = buffer()
        head = [next(first) for _ in range(len(full) // 3)]
        resumed = buffer()
        resumed.load_state_dict(first.state_dict())
        same = all(
            torch.equal(a[args.hook], b[args.hook])
            for a, b in zip(head + list(resumed), full, strict=True)
        )
        print(f"resume on {full[0][args.hook].device}: {'exact' if same else 'MISMATCH'}")


if __name__ == "__main__":
    main()

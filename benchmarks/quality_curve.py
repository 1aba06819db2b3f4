"""Training quality against training tokens: explained variance, L0, CE loss recovered and KL
on held-back text, for a TopK and a ReLU SAE trained side by side from one model pass.

    python benchmarks/quality_curve.py --out /tmp/quality [--activations CACHE_DIR]

Default case: smollm2-135m, blocks.7.hook_resid_pre, d_sae 4608, 409,600 tokens, batch 4096,
evaluation on held-back tokens every 81,920 training tokens. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from saekit.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="run folder (must not exist)")
    parser.add_argument("--activations", help="train from this activation cache")
    parser.add_argument("--hook", default="blocks.7.hook_resid_pre")
    parser.add_argument("--archs", default="topk,relu")
    parser.add_argument("--l1", type=float, help="relu sparsity coefficient (default: saekit's)")
    parser.add_argument("--tokens", type=int, default=409_600)
    parser.add_argument("--eval-every", type=int, default=81_920)
    parser.add_argument("--eval-tokens", type=int, default=16_384)
    args = parser.parse_args()

    cfg = TrainConfig(
        hooks=(args.hook,),
        activations=args.activations,
        archs=tuple(args.archs.split(",")),
        d_saes=(4608,),
        ks=(32,),
        l1s=(args.l1,) if args.l1 else (),
        tokens=args.tokens,
        eval_every_tokens=args.eval_every,
        eval_tokens=args.eval_tokens,
        out=args.out,
    )
    started = time.perf_counter()
    train(cfg)
    print(f"trained in {time.perf_counter() - started:.0f} s\n")
    records = [json.loads(x) for x in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    print("| SAE | tokens | L0 | explained variance | CE loss recovered | KL | dead |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        if r["kind"] == "eval":
            print(
                f"| {r['sae']} | {r['tokens']:,} | {r['l0']:.1f} | {r['explained_variance']:.3f} "
                f"| {r['ce_loss_recovered']:.3f} | {r['kl_div']:.3f} | {r['dead_fraction']:.1%} |"
            )


if __name__ == "__main__":
    main()

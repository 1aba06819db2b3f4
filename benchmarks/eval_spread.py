"""How the evaluation's headline metrics spread with the number of evaluation tokens.

    python benchmarks/eval_spread.py SAE_FOLDER --pool 65536 --sizes 2k,4k,8k,16k,32k

Evaluates the SAE once on `--pool` held-back tokens (its provenance's dataset and holdout
rule), keeping per-document sums, then cuts the pool's documents into disjoint consecutive
blocks of about each size and recomputes every headline metric per block. For each size it prints the spread across
blocks (the standard deviation: what a second evaluation on other tokens would move by), the
mean bootstrap standard error that a single block would report (`saekit.evals.intervals`: it
should match the spread), and the mean over blocks minus the pool's value (bias: the dead
fraction falls with more tokens). With `--json`, one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from saekit.settings import count_arg


def block_weights(tokens_U: torch.Tensor, size: int) -> torch.Tensor:
    """`[blocks, U]` 0/1 rows picking consecutive disjoint blocks of units of about `size`
    tokens each (a last block under half the size is dropped)."""
    ends = torch.div(tokens_U.cumsum(0) - 1, size, rounding_mode="floor").long()
    blocks = int(ends.max()) + 1
    weights = torch.zeros(blocks, tokens_U.numel(), dtype=torch.float64)
    weights[ends, torch.arange(tokens_U.numel())] = 1
    keep = (weights @ tokens_U.double()) >= size / 2
    return weights[keep]


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (a block of one document has no bootstrap SE)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae", help="SAE folder")
    parser.add_argument("--pool", type=count_arg, default=65_536, help="tokens evaluated once")
    parser.add_argument("--sizes", default="2k,4k,8k,16k,32k", help="block sizes in tokens")
    parser.add_argument("--json", help="append one JSON line per size to this file")
    args = parser.parse_args()

    from saekit.data.provenance import Provenance, token_batches
    from saekit.dtypes import DTYPES
    from saekit.evals import EvalTarget, evaluate_saes
    from saekit.evals.baseline import BaselineStore
    from saekit.evals.intervals import UnitSums, standard_errors, weighted_metrics
    from saekit.models import load_model
    from saekit.saes import SAE

    sae = SAE.load(args.sae)
    prov, _ = Provenance.from_sae(sae)
    lm = load_model(prov.model, dtype=DTYPES[prov.dtype])
    unit_sums: dict = {}
    started = time.perf_counter()
    result = evaluate_saes(
        {"sae": EvalTarget.of(sae)}, lm, token_batches(prov, lm.tokenizer, 16, "heldout"),
        max_tokens=args.pool, baselines=BaselineStore.default(), unit_sums=unit_sums,
        ce_tokens=None,
    )["sae"]  # fmt: skip
    seconds = time.perf_counter() - started
    totals = unit_sums["sae"].totals()
    tokens_U = totals["tokens"]
    keys = ("explained_variance", "ce_loss_recovered", "kl_div", "dead_fraction")
    print(f"pool: {result['tokens']} tokens in {tokens_U.numel()} documents, "
          f"evaluated in {seconds:.0f} s")  # fmt: skip
    print(
        "pool values: " + ", ".join(f"{k} {result[k]:.4f} +- {result[k + '_se']:.4f}" for k in keys)
    )
    print(f"{'tokens':>7} {'blocks':>6}  " + "  ".join(f"{k[:18]:>30}" for k in keys))
    print(f"{'':>15}" + "  ".join(f"{'spread / boot SE / bias':>30}" for _ in keys))
    for size in (count_arg(s) for s in args.sizes.split(",")):
        weights = block_weights(tokens_U, size)
        if weights.shape[0] < 2:
            continue
        values = weighted_metrics(totals, weights)
        ses = [
            standard_errors(UnitSums.from_totals({k: t[w > 0] for k, t in totals.items()}))
            for w in weights
        ]
        row = {"tokens": round((weights @ tokens_U.double()).mean().item()),
               "blocks": weights.shape[0]}  # fmt: skip
        for key in keys:
            row[key] = {
                "spread": values[key].std().item(),
                "bootstrap_se": _finite_mean([se[f"{key}_se"] for se in ses]),
                "bias": values[key].mean().item() - result[key],
            }
        cells = [
            f"{row[k]['spread']:9.4f} / {row[k]['bootstrap_se']:7.4f} / {row[k]['bias']:+8.4f}"
            for k in keys
        ]
        print(f"{row['tokens']:>7} {row['blocks']:>6}  " + "  ".join(f"{c:>30}" for c in cells))
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps({"sae": args.sae, "pool": result["tokens"], **row}) + "\n")


if __name__ == "__main__":
    main()

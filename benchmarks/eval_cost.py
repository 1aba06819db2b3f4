"""Time and metrics of one SAE's evaluation for several numbers of loss tokens (`ce_tokens`).

    python benchmarks/eval_cost.py runs/saekit/blocks.15.hook_resid_pre --ce-tokens 2k,4k,8k,16k

Loads the SAE's model once, then for each size evaluates the SAE on `--tokens` held-back
tokens (its provenance's dataset and holdout rule) with the losses on the first `ce_tokens`
of them, from scratch (no cached baseline: what the first evaluation of a run costs), and
prints the wall seconds and the headline metrics with their bootstrap standard errors. The
reconstruction metrics do not depend on `ce_tokens`; the losses move by sampling noise, which
the standard errors measure. With `--json`, one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from saekit.settings import count_arg

KEYS = ("explained_variance", "l0", "dead_fraction", "ce_loss_recovered", "kl_div",
        "kl_div_score")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sae", help="SAE folder")
    parser.add_argument("--tokens", type=count_arg, default=16_384, help="evaluation tokens")
    parser.add_argument("--ce-tokens", default="4k,8k,16k", help="loss tokens, a comma list")
    parser.add_argument("--dtype", help="the model's dtype (default: the one the SAE records)")
    parser.add_argument("--json", help="append one JSON line per size to this file")
    args = parser.parse_args()

    from saekit.data.provenance import Provenance, token_batches
    from saekit.dtypes import DTYPES
    from saekit.evals import EvalTarget, evaluate_saes
    from saekit.evals.baseline import BaselineStore
    from saekit.models import load_model
    from saekit.saes import SAE

    sae = SAE.load(args.sae)
    prov, _ = Provenance.from_sae(sae)
    lm = load_model(prov.model, dtype=DTYPES[args.dtype or prov.dtype])
    for size in (count_arg(s) for s in args.ce_tokens.split(",")):
        load = os.getloadavg()
        started = time.perf_counter()
        result = evaluate_saes(
            {"sae": EvalTarget.of(sae)}, lm, token_batches(prov, lm.tokenizer, 16, "heldout"),
            max_tokens=args.tokens, baselines=BaselineStore(), ce_tokens=size,
        )["sae"]  # fmt: skip
        seconds = time.perf_counter() - started
        row = {"sae": args.sae, "dtype": str(lm.dtype), "tokens": result["tokens"], "ce_tokens": result["ce_tokens"],
               "seconds": round(seconds, 1), "load_before": load, "load_after": os.getloadavg()}  # fmt: skip
        for key in KEYS:
            row[key] = result[key]
            if f"{key}_se" in result:
                row[f"{key}_se"] = result[f"{key}_se"]
        print(f"ce_tokens {result['ce_tokens']:>6}: {seconds:6.1f} s  " + "  ".join(
            f"{k} {row[k]:.4f}" + (f" +- {row[k + '_se']:.4f}" if f"{k}_se" in row else "")
            for k in KEYS
        ), flush=True)  # fmt: skip
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

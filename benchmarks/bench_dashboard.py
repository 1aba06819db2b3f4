"""Time a feature dashboard: 100 features over 100k tokens of smollm2-135m in ONE model pass.

    python benchmarks/bench_dashboard.py                          # random SAE, cpu
    python benchmarks/bench_dashboard.py --sae my_sae --device cuda --out /tmp/dash

Without --sae a random ReLU SAE (d_sae 4608, biases set so features fire on about 5% of
tokens) stands in: the cost of the pass does not depend on what the SAE learned. Every model
forward is counted, to show that each token window is run through the model exactly once for
all features together. Prints one JSON line of timings.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from saekit.analysis import (
    collect_feature_stats,
    logit_effects,
    parse_feature_spec,
    write_dashboard,
)
from saekit.data.provenance import Provenance, token_batches
from saekit.models import load_model
from saekit.saes import SAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sae", help="SAE folder (default: a random SAE on --hook)")
    parser.add_argument("--hook", default="blocks.15.hook_resid_pre")
    parser.add_argument("--features", default="0:100")
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch-rows", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="dashboard folder (default: a temporary one)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    if args.sae:
        sae = SAE.load(args.sae, device=args.device)
    else:
        torch.manual_seed(0)
        meta = {"model_name": args.model, "hook_name": args.hook, "context_size": args.context}
        sae = SAE.create("relu", d_in=lm.d_model, d_sae=8 * lm.d_model, metadata=meta).to(
            args.device
        )
        probe = next(token_batches(Provenance(context=args.context), lm.tokenizer, 4))[0]
        x_ND = lm.run_to_hooks(probe, [args.hook])[args.hook].flatten(0, 1)
        with torch.no_grad():
            sae.b_enc.copy_(-sae.sae_in(x_ND).matmul(sae.W_enc).quantile(0.95, dim=0))
    t_load = time.perf_counter() - t0

    calls = {"forwards": 0, "rows": 0}
    run_to_hooks = lm.run_to_hooks

    def counted(input_ids_BT, hooks):
        calls["forwards"] += 1
        calls["rows"] += input_ids_BT.shape[0]
        return run_to_hooks(input_ids_BT, hooks)

    lm.run_to_hooks = counted
    ids = parse_feature_spec(args.features, sae.cfg.d_sae)
    prov = Provenance.from_sae(sae)[0].replace(context=args.context)
    batches = token_batches(prov, lm.tokenizer, args.batch_rows)
    t0 = time.perf_counter()
    stats = collect_feature_stats(sae, lm, batches, ids, max_tokens=args.tokens, progress=True)
    t_pass = time.perf_counter() - t0
    t0 = time.perf_counter()
    effects = logit_effects(sae, lm, ids, k=10)
    out = args.out or tempfile.mkdtemp(prefix="bench-dashboard-")
    subtitle = f"{args.model} · {sae.cfg.metadata.hook_name}"
    index = write_dashboard(
        out, stats, effects, lm.tokenizer, title="bench_dashboard", subtitle=subtitle
    )
    t_write = time.perf_counter() - t0
    result = {
        "model": args.model,
        "hook": args.hook,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "features": len(ids),
        "tokens": stats.n_tokens,
        "rows": stats.n_rows,
        "model_forwards": calls["forwards"],
        "rows_forwarded": calls["rows"],
        "load_s": round(t_load, 1),
        "pass_s": round(t_pass, 1),
        "tokens_per_s": round(stats.n_tokens / t_pass),
        "logits_and_html_s": round(t_write, 1),
        "total_s": round(t_pass + t_write, 1),
        "index": str(index),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

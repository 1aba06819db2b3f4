"""Attribution graphs on the default model (smollm2-135m): time, peak memory, scores, checks.

Usage:
    # trained transcoders, one folder per layer (e.g. from `saekit train --transcoders all`)
    PYTHONPATH=src python benchmarks/bench_circuits.py --transcoders runs/tc/blocks.*.ln2.hook_normalized
    # random TopK transcoders: time and memory only (their scores say nothing)
    PYTHONPATH=src python benchmarks/bench_circuits.py [--d-sae 4608] [--k 32]
        [--max-feature-nodes 4096] [--batch-size 256] [--out /tmp/circuits-bench]

Prints one JSON line per prompt: tokens, active features, seconds, peak RSS during the trace
(sampled every 2 ms) and its increase, replacement and completeness scores, the replacement
model's logits against HF's, and ablation checks of the most influential features (the
change of the top logit predicted by the graph against the actual one).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from crosscheck_circuit_tracer import PeakRSS

from saekit.circuits import PerLayerTranscoders, ReplacementModel
from saekit.circuits.run import load_replacement, trace_prompt
from saekit.models import load_model
from saekit.saes.base import SAE

PROMPTS = {
    "fact": "The Eiffel Tower is located in the city of",
    "code": "def total(values):\n    return sum(values[i] for i in range(len(values",
}


def random_model(d_sae: int, k: int) -> ReplacementModel:
    lm = load_model("smollm2-135m")
    saes = []
    for layer in range(lm.n_layers):
        sae = SAE.create("topk", d_in=lm.d_model, d_sae=d_sae, k=k, apply_b_dec_to_input=False,
                         metadata={"hook_name": f"blocks.{layer}.hook_resid_mid",
                                   "hook_name_out": f"blocks.{layer}.hook_mlp_out"})  # fmt: skip
        saes.append(sae)
    return ReplacementModel(lm, PerLayerTranscoders(saes, lm.n_layers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transcoders", nargs="*", default=(), help="folders (default: random)")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--max-feature-nodes", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--check-features", type=int, default=3)
    parser.add_argument("--prompts", default=",".join(PROMPTS), help="which of " + ",".join(PROMPTS))
    parser.add_argument("--out", default="/tmp/circuits-bench")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    model = load_replacement(args.transcoders) if args.transcoders else random_model(args.d_sae, args.k)
    lm = model.lm
    print(json.dumps({"setup_s": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
                      "transcoders": args.transcoders[0] if args.transcoders else "random"}), flush=True)  # fmt: skip
    # one-time costs (first forwards, allocator and thread pools) stay out of the prompts' numbers
    trace_prompt(model, "Hello world", None, max_feature_nodes=16, check_features=1)
    for name in args.prompts.split(","):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = trace_prompt(model, PROMPTS[name], f"{args.out}/{name}", slug=name,
                                  batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes,
                                  check_features=args.check_features,
                                  log=lambda m: print("  " + m, flush=True))  # fmt: skip
            seconds = time.perf_counter() - t0
        g = result.graph
        clean = lm.logits(g.input_ids_T[None])[0]
        replaced = model.forward(model.prepare(g.input_ids_T, g.info["frozen_positions"])).logits_TV
        top = lm.tokenizer.decode([int(g.logit_ids_K[0])])
        checks = [{"feature": c["feature"], **{k: round(c[k][0], 4) for k in
                   ("predicted_direct", "predicted", "actual_direct", "actual_replacement", "actual_model")}}
                  for c in result.interventions]  # fmt: skip
        print(json.dumps({
            "prompt": name, "tokens": g.n_pos, "active_features": g.info["active_features"],
            "feature_nodes": g.n_features, "logits": g.n_logits, "top_logit": top,
            "top_prob": round(float(g.logit_probs_K[0]), 3), "seconds": round(seconds, 1),
            "attribution_seconds": g.info["attribution_seconds"], "peak_rss_mib": round(mem.peak),
            "peak_increase_mib": round(mem.peak - mem.before),
            "memory_estimate_mib": round(result.memory_estimate["total"] / 2**20),
            "replacement_score": round(g.info["replacement_score"], 4),
            "completeness_score": round(g.info["completeness_score"], 4),
            "nodes_kept": len(result.json["nodes"]), "links_kept": len(result.json["links"]),
            "max_logit_diff_vs_hf": float((replaced - clean).abs().max()),
            "ablation_checks_top_logit": checks,
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""Attribution graphs on the default model (smollm2-135m) with random transcoders.

Usage:
    PYTHONPATH=src python benchmarks/bench_circuits.py [--layers 30] [--d-sae 4608] [--k 32]
        [--max-feature-nodes 4096] [--batch-size 256] [--out /tmp/circuits-bench]

Random top-k transcoders (one per layer, reading blocks.L.hook_resid_mid, writing
blocks.L.hook_mlp_out) measure time and memory only: their scores say nothing about a trained
set. Prints one JSON line per prompt (seconds, peak RSS, active features, scores, exactness).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from saekit.circuits import PerLayerTranscoders, ReplacementModel
from saekit.circuits.run import trace_prompt
from saekit.models import load_model
from saekit.saes.base import SAE

PROMPTS = {
    "fact": "The Eiffel Tower is located in the city of",
    "code": "def total(values):\n    return sum(values[i] for i in range(len(values)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--max-feature-nodes", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default="/tmp/circuits-bench")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    lm = load_model("smollm2-135m")
    saes = []
    for layer in range(lm.n_layers):
        sae = SAE.create("topk", d_in=lm.d_model, d_sae=args.d_sae, k=args.k, apply_b_dec_to_input=False,
                         metadata={"hook_name": f"blocks.{layer}.hook_resid_mid",
                                   "hook_name_out": f"blocks.{layer}.hook_mlp_out"})  # fmt: skip
        saes.append(sae)
    model = ReplacementModel(lm, PerLayerTranscoders(saes, lm.n_layers))
    print(json.dumps({"setup_s": round(time.perf_counter() - start, 1)}), flush=True)
    for name, text in PROMPTS.items():
        t0 = time.perf_counter()
        result = trace_prompt(model, text, f"{args.out}/{name}", slug=name, batch_size=args.batch_size,
                              max_feature_nodes=args.max_feature_nodes, check_features=3,
                              log=lambda m: print("  " + m, flush=True))  # fmt: skip
        seconds = time.perf_counter() - t0
        g = result.graph
        prompt = model.prepare(g.input_ids_T)
        logits = prompt.run.logits_TV
        clean = lm.logits(g.input_ids_T[None])[0]
        print(json.dumps({
            "prompt": name, "tokens": g.n_pos, "active_features": g.info["active_features"],
            "feature_nodes": g.n_features, "logits": g.n_logits, "seconds": round(seconds, 1),
            "attribution_seconds": g.info["attribution_seconds"],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "memory_estimate_mib": round(result.memory_estimate["total"] / 2**20),
            "replacement_score": round(g.info["replacement_score"], 4),
            "completeness_score": round(g.info["completeness_score"], 4),
            "max_logit_diff_vs_hf": float((logits - clean).abs().max()),
            "links_kept": len(result.json["links"]),
            "ablation_checks": [{k: c[k] for k in ("feature", "predicted_direct", "actual_direct",
                                                   "actual_model")} for c in result.interventions],
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

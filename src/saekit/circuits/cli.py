"""`saekit attribute`: the attribution graph of a prompt through per-layer transcoders."""

from __future__ import annotations

import argparse
import json
import sys

from saekit.data.provenance import add_data_arguments

# the data flags attribution reads: the model and how the prompt becomes tokens
DATA_FLAGS = ("model", "dtype", "device", "prepend_bos", "exclude_special_tokens")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `attribute` sub-command."""
    p = subparsers.add_parser(
        "attribute",
        help="attribution graph of a prompt through transcoders (circuit tracing)",
        description="Build the local replacement model of a prompt (attention and norms frozen, "
        "MLPs replaced by transcoders plus error terms), compute the direct effects between "
        "active features, errors, tokens and the top logits, prune the graph, and write "
        "OUT/<slug>.json (circuit-tracer / Neuronpedia schema), OUT/index.html (offline viewer), "
        "OUT/graph.safetensors and OUT/interventions.json (ablation checks of the top features).",
    )
    p.add_argument("transcoders", nargs="+", help="transcoder folders, one per layer (any order)")
    p.add_argument("--prompt", required=True, help="the text to trace")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--slug", default="graph", help="graph name (file <slug>.json)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="pruning (default 0.8)")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="pruning (default 0.98)")
    p.add_argument("--max-logits", type=int, default=10, help="logit targets at most (default 10)")
    p.add_argument("--desired-prob", type=float, default=0.95,
                   help="stop adding logits at this cumulative probability (default 0.95)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=256,
                   help="targets per backward sweep; lower it for long prompts (default 256)")  # fmt: skip
    p.add_argument("--max-feature-nodes", type=int, default=None,
                   help="keep the N most influential features (default: all active ones)")  # fmt: skip
    p.add_argument("--check-features", type=int, default=5,
                   help="ablate the N most influential features and compare (default 5)")  # fmt: skip
    p.add_argument("--dashboards", nargs="*", default=(),
                   help="dashboard folders, one per layer in layer order, for node details")  # fmt: skip
    # --model --dtype --device --prepend-bos --exclude-special-tokens, as every data command;
    # not given, each takes the first transcoder folder's record. Excluded special tokens
    # (BOS, EOS, padding) have their MLP outputs held at the clean values: no nodes there.
    add_data_arguments(p, for_sae=True, only=DATA_FLAGS)
    p.set_defaults(func=run_attribute)


def run_attribute(args: argparse.Namespace) -> int:
    from saekit import load_sae
    from saekit.circuits.run import feature_info_from_dashboards, load_replacement, trace_prompt
    from saekit.data.provenance import settings_for_sae
    from saekit.dtypes import DTYPES
    from saekit.models import load_model
    from saekit.models.loading import resolve_device

    device = resolve_device(getattr(args, "device", "auto"))
    saes = [load_sae(folder, device=device) for folder in args.transcoders]
    data, sources = settings_for_sae(saes[0], args)
    if sources["model"] == "default":
        raise ValueError(f"{args.transcoders[0]}: cfg.json names no metadata.model_name; pass --model")
    lm = load_model(data.model, device=device, dtype=DTYPES[data.dtype])
    model = load_replacement(saes, lm)
    info = feature_info_from_dashboards(args.dashboards) if args.dashboards else None
    result = trace_prompt(
        model, args.prompt, args.out, slug=args.slug, node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold, max_logits=args.max_logits,
        desired_prob=args.desired_prob, batch_size=args.batch_size,
        max_feature_nodes=args.max_feature_nodes, check_features=args.check_features,
        prepend_bos=data.prepend_bos, exclude_special_tokens=data.exclude_special_tokens,
        feature_info=info, log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    summary = {k: result.graph.info[k] for k in
               ("replacement_score", "completeness_score", "active_features", "attribution_seconds")}  # fmt: skip
    print(json.dumps({**summary, "files": result.files}, indent=1))
    return 0

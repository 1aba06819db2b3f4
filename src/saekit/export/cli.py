"""`saekit export neuronpedia SAE --features ... --out np/`."""

from __future__ import annotations

import argparse

from saekit.data.provenance import add_data_arguments, token_batches
from saekit.settings import count_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `export` with its `neuronpedia` target."""
    export = subparsers.add_parser("export", help="export SAE features to other tools")
    targets = export.add_subparsers(dest="target", metavar="TARGET", required=True)
    p = targets.add_parser(
        "neuronpedia",
        help="feature dashboards as Neuronpedia's upload takes them (batch-N.json)",
        description="One model pass over the SAE's own data (its provenance record unless "
        "flags say otherwise), then batch-N.json files of feature data (top activations and "
        "interval samples with per-token values, activation and logit histograms, logit "
        "effects), run_settings.json with the SAE's metadata, and explanations.jsonl.",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path")
    p.add_argument("--features", default="0:64", help="'0:100' (range) or '3,17,42' (default 0:64)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokens", type=count_arg, default=100_000, metavar="N",
                   help="tokens to scan: 50000, 100k, 1M (default 100k)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="features per batch file (default 128)")
    p.add_argument("--model-id", help="Neuronpedia model id (default: the model spec)")
    p.add_argument("--sae-set", help="Neuronpedia SAE set name (default: res-saekit, mlp-saekit, ...)")
    p.add_argument("--explanations", help="JSON {feature: text} or JSONL {feature, explanation}")
    p.add_argument("--top-k", type=int, default=20, help="top activations per feature (default 20)")
    p.add_argument("--samples", type=int, default=40, help="interval samples per feature (default 40)")
    add_data_arguments(p, for_sae=True)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_export_neuronpedia)


def run_export_neuronpedia(args: argparse.Namespace) -> int:
    """Handler of `saekit export neuronpedia`."""
    from saekit.analysis.cli import load_sae_and_model
    from saekit.analysis.features import parse_feature_spec
    from saekit.export.neuronpedia import export_neuronpedia, read_explanations

    sae, lm, data = load_sae_and_model(args)
    ids = parse_feature_spec(args.features, sae.cfg.d_sae)
    paths = export_neuronpedia(
        sae, lm, token_batches(data, lm.tokenizer, data.forward_rows), ids, args.out, prov=data,
        max_tokens=args.tokens, batch_size=args.batch_size, model_id=args.model_id,
        sae_set=args.sae_set, top_k=args.top_k, n_samples=args.samples,
        explanations=read_explanations(args.explanations) if args.explanations else None,
        progress=not args.no_progress,
    )  # fmt: skip
    print(f"wrote {len(paths)} batch file(s) of {len(ids)} features to {args.out} "
          f"({data.describe_special_tokens()})")  # fmt: skip
    return 0

"""`saekit dashboard` and `saekit logit-lens`."""

from __future__ import annotations

import argparse
import json

from saekit.data.provenance import add_data_arguments, settings_for_sae, token_batches
from saekit.models.loading import resolve_device
from saekit.settings import count_arg

MODEL_FLAGS = ("model", "dtype", "device")  # what logit-lens reads: no text, only weights


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `dashboard` and `logit-lens` sub-commands."""
    p = subparsers.add_parser(
        "dashboard",
        help="static HTML feature dashboards (one model pass for all features)",
        description="Run the model over a dataset once, collect statistics and top examples of "
        "the requested features, and write index.html + one page per feature to --out. The "
        "data settings (model, hook, dataset, context, BOS and special-token conventions) come "
        "from the SAE folder's provenance record unless given.",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path (anything saekit.load_sae takes)")
    p.add_argument("--features", default="0:20", help="'0:100' (range) or '3,17,42' (default 0:20)")
    p.add_argument(
        "--tokens", type=count_arg, default=50_000, metavar="N",
        help="tokens to scan: 50000, 100k, 1M (default 50k)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    add_data_arguments(p, for_sae=True)
    p.add_argument("--top-k", type=int, default=20, help="top examples per feature (default 20)")
    p.add_argument("--logits", type=int, default=10, help="tokens per logit table (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the quantile sampling")
    p.add_argument(
        "--exclude-after-special", type=int, default=0, metavar="N",
        help="leave out the N positions after each special token (BOS, <|im_start|>, EOS) and "
        "the first N of each window, where activations are often large for many features "
        "(default 0: keep them; a feature page warns when they dominate its top examples)",
    )  # fmt: skip
    p.add_argument(
        "--autointerp", metavar="DIR", help="show explanations from `saekit explain`'s --out"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_dashboard)

    p = subparsers.add_parser(
        "logit-lens",
        help="tokens a feature's decoder direction boosts and suppresses",
        description="Read feature decoder directions through the model's unembedding "
        "(W_dec[f] @ W_U, final norm not applied). With --token-sets, rank every feature by "
        "how much it boosts token sets (digits, capitalised words, ...). The model comes from "
        "the SAE folder's provenance record unless given.",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path")
    p.add_argument("--feature", help="feature id or spec ('3', '0:10', '3,17')")
    p.add_argument("--k", type=int, default=20, help="tokens per direction (default 20)")
    p.add_argument(
        "--token-sets", action="store_true", help="token-set enrichment over all features"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    add_data_arguments(p, for_sae=True, only=MODEL_FLAGS)
    p.set_defaults(func=run_logit_lens)


def load_sae_and_model(args: argparse.Namespace):
    """The SAE, its model and its data settings (the folder's record, overridden by flags)."""
    from saekit import load_sae
    from saekit.dtypes import DTYPES
    from saekit.models import load_model

    device = resolve_device(getattr(args, "device", "auto"))
    sae = load_sae(args.sae, device=device)
    data, sources = settings_for_sae(sae, args)
    if sources["model"] == "default":
        raise ValueError(f"{args.sae}: cfg.json names no metadata.model_name; pass --model")
    return sae, load_model(data.model, device=device, dtype=DTYPES[data.dtype]), data


def run_dashboard(args: argparse.Namespace) -> int:
    """Handler of `saekit dashboard`."""
    from saekit.analysis.dashboard import build_dashboard
    from saekit.analysis.features import parse_feature_spec
    from saekit.autointerp.run import read_results

    if args.tokens < 1:
        raise ValueError(f"--tokens must be positive, got {args.tokens}")
    if args.exclude_after_special < 0:
        raise ValueError(
            f"--exclude-after-special must be 0 or more, got {args.exclude_after_special}"
        )
    sae, lm, data = load_sae_and_model(args)
    ids = parse_feature_spec(args.features, sae.cfg.d_sae)
    index = build_dashboard(
        sae,
        lm,
        token_batches(data, lm.tokenizer, data.forward_rows),
        ids,
        args.out,
        max_tokens=args.tokens,
        n_logits=args.logits,
        title=f"SAE {args.sae}",
        progress=not args.no_progress,
        top_k=args.top_k,
        seed=args.seed,
        interp=read_results(args.autointerp) if args.autointerp else None,
        exclude_after_special=args.exclude_after_special,
    )
    print(f"wrote {index} ({len(ids)} features; {data.describe_special_tokens()})")
    return 0


def run_logit_lens(args: argparse.Namespace) -> int:
    """Handler of `saekit logit-lens`."""
    from saekit.analysis.enrichment import token_set_enrichment, top_features_per_set
    from saekit.analysis.features import parse_feature_spec
    from saekit.analysis.logit_lens import logit_effects

    if args.feature is None and not args.token_sets:
        raise ValueError("give --feature I and/or --token-sets")
    sae, lm, _ = load_sae_and_model(args)
    out: dict = {}
    if args.feature is not None:
        ids = parse_feature_spec(args.feature, sae.cfg.d_sae)
        out["features"] = [e.to_dict() for e in logit_effects(sae, lm, ids, k=args.k)]
    if args.token_sets:
        scores_FS, names, _ = token_set_enrichment(sae, lm)
        out["token_sets"] = top_features_per_set(scores_FS, names, n=args.k)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for effects in out.get("features", []):
        print(f"feature {effects['feature']}")
        for label in ("positive", "negative"):
            row = "  ".join(f"{t!r} {v:+.3f}" for _, t, v in effects[label])
            print(f"  {label}: {row}")
    for name, top in out.get("token_sets", {}).items():
        print(f"{name}: " + "  ".join(f"{f} ({s:+.2f})" for f, s in top))
    return 0

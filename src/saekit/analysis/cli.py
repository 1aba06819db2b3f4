"""`saekit dashboard` and `saekit logit-lens`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

from torch import Tensor

from saekit.data.datasets import BUILTIN_PYTHON_DOCS
from saekit.training.cli import parse_count

DEFAULT_DATASET = BUILTIN_PYTHON_DOCS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `dashboard` and `logit-lens` sub-commands."""
    p = subparsers.add_parser(
        "dashboard",
        help="static HTML feature dashboards (one model pass for all features)",
        description="Run the model over a dataset once, collect statistics and top examples of "
        "the requested features, and write index.html + one page per feature to --out. Model, "
        "hook, dataset and context size default to the SAE folder's cfg.json metadata.",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path (anything saekit.load_sae takes)")
    p.add_argument("--features", default="0:20", help="'0:100' (range) or '3,17,42' (default 0:20)")
    p.add_argument(
        "--tokens",
        type=parse_count,
        default=50_000,
        help="tokens to scan: 50000, 100k, 1M (default 50k)",
    )
    p.add_argument("--out", required=True, help="output folder")
    _add_source_args(p)
    p.add_argument("--dataset", help=f"dataset spec (default: cfg's, else {DEFAULT_DATASET})")
    p.add_argument("--context-size", type=int, help="tokens per window (default: cfg's, else 128)")
    p.add_argument("--batch-rows", type=int, default=16, help="windows per forward (default 16)")
    p.add_argument("--top-k", type=int, default=20, help="top examples per feature (default 20)")
    p.add_argument("--logits", type=int, default=10, help="tokens per logit table (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the quantile sampling")
    p.add_argument(
        "--keep-special-tokens",
        action="store_true",
        help="also count positions holding BOS/EOS/pad (excluded by default: BOS often has "
        "outsized activations that would crowd the top examples)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_dashboard)

    p = subparsers.add_parser(
        "logit-lens",
        help="tokens a feature's decoder direction boosts and suppresses",
        description="Read feature decoder directions through the model's unembedding "
        "(W_dec[f] @ W_U, final norm not applied). With --token-sets, rank every feature by "
        "how much it boosts token sets (digits, capitalised words, ...).",
    )
    p.add_argument("sae", help="SAE folder, .pt file or hub path")
    p.add_argument("--feature", help="feature id or spec ('3', '0:10', '3,17')")
    p.add_argument("--k", type=int, default=20, help="tokens per direction (default 20)")
    p.add_argument(
        "--token-sets", action="store_true", help="token-set enrichment over all features"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_source_args(p)
    p.set_defaults(func=run_logit_lens)


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model spec (default: the SAE's metadata.model_name)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


def _load(args: argparse.Namespace):
    """The SAE and its model, the model spec defaulting to the SAE's metadata."""
    from saekit import load_sae
    from saekit.models import load_model

    sae = load_sae(args.sae, device=args.device)
    model = args.model or sae.cfg.metadata.model_name
    if not model:
        raise ValueError(f"{args.sae}: cfg.json names no metadata.model_name; pass --model")
    return sae, load_model(model, device=args.device)


def token_batches(
    sae,
    lm,
    dataset: str | None,
    context_size: int | None,
    rows: int,
    exclude_special_tokens: bool = True,
) -> Iterator[tuple[Tensor, Tensor]]:
    """`(input_ids_BT, keep_mask_BT)` batches; dataset, context and BOS from the SAE's metadata."""
    from saekit.data import TokenWindows, iter_documents, iter_token_batches

    meta = sae.cfg.metadata
    windows = TokenWindows(
        iter_documents(dataset or meta.dataset_path or DEFAULT_DATASET),
        lm.tokenizer,
        context_size or meta.context_size or 128,
        prepend_bos=meta.prepend_bos,
        exclude_special_tokens=exclude_special_tokens,
    )
    return iter_token_batches(windows, rows)


def run_dashboard(args: argparse.Namespace) -> int:
    """Handler of `saekit dashboard`."""
    from saekit.analysis.dashboard import build_dashboard
    from saekit.analysis.features import parse_feature_spec

    sae, lm = _load(args)
    ids = parse_feature_spec(args.features, sae.cfg.d_sae)
    batches = token_batches(
        sae, lm, args.dataset, args.context_size, args.batch_rows, not args.keep_special_tokens
    )
    index = build_dashboard(
        sae,
        lm,
        batches,
        ids,
        args.out,
        max_tokens=args.tokens,
        n_logits=args.logits,
        title=f"SAE {args.sae}",
        progress=not args.no_progress,
        top_k=args.top_k,
        seed=args.seed,
    )
    print(f"wrote {index} ({len(ids)} features)")
    return 0


def run_logit_lens(args: argparse.Namespace) -> int:
    """Handler of `saekit logit-lens`."""
    from saekit.analysis.enrichment import token_set_enrichment, top_features_per_set
    from saekit.analysis.features import parse_feature_spec
    from saekit.analysis.logit_lens import logit_effects

    if args.feature is None and not args.token_sets:
        raise ValueError("give --feature I and/or --token-sets")
    sae, lm = _load(args)
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

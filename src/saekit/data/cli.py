"""`saekit cache`: write model activations to a resumable on-disk cache."""

from __future__ import annotations

import argparse

from saekit.data.cache import build_cache
from saekit.data.datasets import BUILTIN_PYTHON_DOCS, HOLDOUT_EVERY
from saekit.dtypes import MODEL_DTYPES
from saekit.models.loading import DEFAULT_MODEL

DEFAULT_HOOK = "blocks.15.hook_resid_pre"
DEFAULT_DATASET = BUILTIN_PYTHON_DOCS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cache` sub-command."""
    p = subparsers.add_parser(
        "cache",
        help="cache activations to disk (resumable)",
        description="Run a model over a dataset and write the activations at one or more hooks "
        "to safetensors shards plus manifest.json. Rerun the same command after an "
        "interruption to continue where it stopped.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    p.add_argument(
        "--hook",
        action="append",
        dest="hooks",
        metavar="HOOK",
        help=f"hook name; repeat for several (default {DEFAULT_HOOK})",
    )
    p.add_argument(
        "--dataset", default=DEFAULT_DATASET, help=f"dataset spec (default {DEFAULT_DATASET})"
    )
    p.add_argument(
        "--text-column", default="text", help="text column of the dataset (default text)"
    )
    p.add_argument(
        "--holdout-every",
        type=int,
        default=HOLDOUT_EVERY,
        help=f"leave out every Nth document, held back for evaluation "
        f"(default {HOLDOUT_EVERY}; 0 caches every document)",
    )
    p.add_argument("--tokens", type=int, required=True, help="tokens to cache (at least)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--dtype", choices=MODEL_DTYPES, default="float32", help="stored dtype")
    p.add_argument(
        "--context", type=int, default=128, help="context window in tokens (default 128)"
    )
    p.add_argument(
        "--shard-tokens", type=int, default=16384, help="tokens per shard (default 16384)"
    )
    p.add_argument("--rows", type=int, default=32, help="context windows per forward (default 32)")
    p.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    p.add_argument("--no-bos", action="store_true", help="do not start each window with BOS")
    p.add_argument(
        "--keep-special-tokens",
        action="store_true",
        help="also cache positions holding special tokens (BOS, EOS, ...)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    """Handler of `saekit cache`."""
    from saekit.models import load_model

    hooks = args.hooks or [DEFAULT_HOOK]
    lm = load_model(args.model, device=args.device)
    manifest = build_cache(
        lm,
        hooks,
        args.dataset,
        args.tokens,
        args.out,
        model_name=args.model,
        text_column=args.text_column,
        holdout_every=args.holdout_every,
        dtype=args.dtype,
        context_size=args.context,
        shard_tokens=args.shard_tokens,
        rows_per_forward=args.rows,
        prepend_bos=not args.no_bos,
        exclude_special_tokens=not args.keep_special_tokens,
        progress=not args.no_progress,
    )
    note = " (dataset exhausted)" if manifest["exhausted"] else ""
    print(f"{args.out}: {manifest['tokens']} tokens in {len(manifest['shards'])} shards{note}")
    return 0

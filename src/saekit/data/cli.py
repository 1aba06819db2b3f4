"""`saekit cache`: write model activations to a resumable on-disk cache."""

from __future__ import annotations

import argparse

from saekit import settings
from saekit.data.cache import build_cache
from saekit.data.provenance import DataSettings, Provenance, add_data_arguments, default_hook
from saekit.dtypes import DTYPES, MODEL_DTYPES
from saekit.models.loading import resolve_device
from saekit.settings import count_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `cache` sub-command."""
    p = subparsers.add_parser(
        "cache",
        help="cache activations to disk (resumable)",
        description="Run a model over a dataset and write the activations at one or more hooks "
        "to safetensors shards plus manifest.json, which records where they came from (the "
        "provenance record that `saekit train --activations` reads back). Rerun the same "
        "command after an interruption to continue where it stopped.",
    )
    add_data_arguments(p)
    p.add_argument(
        "--tokens", type=count_arg, required=True, metavar="N",
        help="tokens to cache, e.g. 409600, 400k, 1M: rounded up to whole forwards, and fewer "
        "if the dataset ends first (builtin:python-docs holds about 416k training tokens)",
    )  # fmt: skip
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument(
        "--store-dtype", choices=MODEL_DTYPES,
        help="dtype of the stored activations (default: the model's --dtype)",
    )  # fmt: skip
    p.add_argument(
        "--shard-tokens", type=count_arg, default=16384, metavar="N",
        help="tokens per shard (default 16384)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    """Handler of `saekit cache`."""
    from saekit.models import load_model

    data = settings.build(DataSettings, settings.given(args, DataSettings))
    lm = load_model(data.model, device=resolve_device(data.device), dtype=DTYPES[data.dtype])
    prov = Provenance.of(data)
    if not prov.hooks:
        prov = prov.replace(hooks=(default_hook(lm.n_layers),))
    manifest = build_cache(
        lm,
        prov,
        args.tokens,
        args.out,
        store_dtype=args.store_dtype,
        shard_tokens=args.shard_tokens,
        rows_per_forward=data.forward_rows,
        progress=not args.no_progress,
    )
    note = " (dataset exhausted)" if manifest["exhausted"] else ""
    print(f"{args.out}: {manifest['tokens']} tokens in {len(manifest['shards'])} shards{note}")
    return 0

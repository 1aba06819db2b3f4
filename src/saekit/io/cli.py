"""`saekit convert`, `saekit info`, `saekit push`."""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.io.converters import FORMATS, WRITABLE_FORMATS, convert, detect_format


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the io sub-commands to the `saekit` parser."""
    p = subparsers.add_parser("convert", help="convert an SAE between formats",
                              description="Convert an SAE (saekit, SAELens, sparsify, "
                              "dictionary_learning folder, or an original mats .pt file).")
    p.add_argument("src", help="SAE folder or legacy .pt file")
    p.add_argument("dst", help="output folder")
    p.add_argument("--to", choices=(*WRITABLE_FORMATS, "circuit-tracer"), default="saekit",
                   help="output format (circuit-tracer: a CLT folder or a run folder of "
                   "per-layer transcoders; circuit-tracer files convert back --to saekit)")
    p.add_argument("--from", dest="src_format", choices=FORMATS, default=None,
                   help="input format (default: detected)")
    p.add_argument("--force", action="store_true",
                   help="replace DST if it exists (the new folder replaces it only once complete)")
    p.set_defaults(func=_convert)

    p = subparsers.add_parser("info", help="describe an SAE: architecture, sizes, model, hook")
    p.add_argument("spec", help="SAE folder, .pt file, hf://OWNER/REPO/PATH or release name")
    p.add_argument("--sae-id", default=None, help="SAE id within a release or hub repo")
    p.add_argument("--no-check-weights", dest="check_weights", action="store_false",
                   help="load NaN/inf weights anyway, to inspect a broken file")
    p.set_defaults(func=_info)

    p = subparsers.add_parser("push", help="upload an SAE folder to the HF hub with a model card")
    p.add_argument("folder", help="saekit SAE folder")
    p.add_argument("repo", help="hub repo id, OWNER/NAME")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--dry-run", metavar="DIR", default=None,
                   help="write the files that would be uploaded (with README.md) to DIR instead")
    p.add_argument("--force", action="store_true", help="with --dry-run: replace DIR if it exists")
    p.set_defaults(func=_push)


def _convert(args: argparse.Namespace) -> int:
    from saekit.io.circuit_tracer import CIRCUIT_TRACER, convert_dictionary, is_circuit_tracer

    if args.to == CIRCUIT_TRACER or (args.src_format is None and is_circuit_tracer(args.src)):
        dst = convert_dictionary(args.src, args.dst, args.to, force=args.force)
        print(f"wrote {args.to} folder {dst}")
        return 0
    dst = convert(args.src, args.dst, to=args.to, src_format=args.src_format, force=args.force)
    print(f"wrote {args.to} folder {dst}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from saekit.io.load import load_sae

    sae = load_sae(args.spec, args.sae_id, check_weights=args.check_weights)
    cfg, meta = sae.cfg, sae.cfg.metadata
    local = Path(args.spec)
    source = detect_format(local) if local.exists() else f"hub: {args.spec}"
    origin = meta.extra.get("source_format")
    if origin and origin != source:
        source = f"{source} (converted from {origin})"
    rows = [
        ("architecture", cfg.architecture),
        ("d_in", cfg.d_in),
        ("d_sae", cfg.d_sae),
        *([("d_out", cfg.d_out)] if cfg.d_out != cfg.d_in else []),
        *[(name, value) for name, value in cfg.settings().items()],
        ("dtype", cfg.dtype),
        ("model", meta.model_name),
        ("hook", meta.hook_name),
        ("dataset", meta.dataset_path),
        ("context_size", meta.context_size),
        ("source format", source),
    ]
    if local.is_dir():
        rows += _recorded_metrics(local)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value if value is not None else '-'}")
    return 0


def _recorded_metrics(folder: Path) -> list[tuple[str, object]]:
    """What the folder records about the SAE's quality: its `saekit eval` report and the
    firing densities saved with it."""
    from saekit.io.push import read_metrics
    from saekit.saes.folder import load_sparsity

    rows: list[tuple[str, object]] = []
    report = read_metrics(folder)
    for key in ("l0", "explained_variance", "ce_loss_recovered", "kl_div", "dead_fraction", "tokens"):
        if isinstance(report.get(key), (int, float)):
            value = report[key]
            rows.append((f"eval {key}", f"{value:.4g}" if isinstance(value, float) else value))
    try:
        density = load_sparsity(folder)
    except (ValueError, OSError):
        density = None
    if density is not None and density.numel():
        import math

        from saekit.evals.metrics import DENSITY_EPS

        dead = float((density <= math.log10(DENSITY_EPS) + 1e-6).float().mean())
        rows.append(("training density", f"median 10^{float(density.median()):.2f}, "
                     f"{dead:.1%} never fired (sparsity.safetensors)"))
    return rows


def _push(args: argparse.Namespace) -> int:
    from saekit.io.push import push_to_hub

    result = push_to_hub(
        args.folder, args.repo, private=args.private, dry_run_dir=args.dry_run, force=args.force
    )
    print(f"staged upload in {result}" if args.dry_run else f"uploaded: {result}")
    return 0

"""`saekit eval SAE_FOLDER`: every metric of a saved SAE, as a table + PNG or as JSON."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from saekit.data.datasets import BUILTIN_PYTHON_DOCS
from saekit.dtypes import DTYPES, MODEL_DTYPES
from saekit.evals.evaluate import HOLDOUT_EVERY, evaluate_sae, heldout_token_batches, scalar_metrics
from saekit.evals.metrics import DENSE_THRESHOLD, density_histogram
from saekit.fileio import atomic_write, atomic_write_text

DEFAULT_DATASET = BUILTIN_PYTHON_DOCS
DEFAULT_CONTEXT = 128
HISTOGRAM_FILE = "feature_density.png"
RESULT_FILE = "eval.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` sub-command."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a saved SAE: L0, explained variance, CE loss recovered, KL, density",
        description="Evaluate an SAE folder (saekit or SAELens layout) spliced into its model. "
        "Model, hook, context and dataset come from the folder's cfg.json unless given; by "
        f"default the held-back documents (every {HOLDOUT_EVERY}th) of the dataset are used.",
    )
    parser.add_argument("sae", metavar="SAE_FOLDER", help="folder with cfg.json + sae_weights")
    parser.add_argument("--model", help="model spec (default: cfg.json metadata.model_name)")
    parser.add_argument(
        "--dataset",
        help=f"dataset spec (default: cfg.json metadata.dataset_path, else {DEFAULT_DATASET})",
    )
    parser.add_argument("--hook", help="hook to splice at (default: cfg.json metadata.hook_name)")
    parser.add_argument(
        "--context", type=int, help="tokens per window (default: cfg.json context_size, else 128)"
    )
    parser.add_argument(
        "--tokens", type=int, default=16_384, help="evaluation tokens (default: 16384)"
    )
    parser.add_argument(
        "--batch-rows", type=int, default=16, help="windows per forward (default: 16)"
    )
    parser.add_argument(
        "--holdout-every",
        type=int,
        default=HOLDOUT_EVERY,
        help=f"evaluate on every N-th document, the ones training holds back (default: "
        f"{HOLDOUT_EVERY}); 0 uses every document",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--dtype", default="float32", choices=MODEL_DTYPES, help="model dtype"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument(
        "--out",
        help=f"folder for {HISTOGRAM_FILE} and {RESULT_FILE} (default: the SAE folder; "
        "with --json nothing is written unless --out is given)",
    )
    parser.set_defaults(func=run_eval_command)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _meta(sae, key: str, default: Any = None) -> Any:
    value = getattr(sae.cfg.metadata, key, None)
    return default if value is None else value


def _load_model(spec: str, device: str, dtype: str):
    from saekit.models import load_model

    try:
        return load_model(spec, device=device, dtype=DTYPES[dtype])
    except (ValueError, FileNotFoundError, KeyError):
        raise
    except (OSError, ImportError) as err:
        raise ValueError(f"cannot load model {spec!r}: {err}") from err


def run_eval_command(args: argparse.Namespace) -> int:
    """Load the SAE and its model, evaluate, and report."""
    from saekit.saes import SAE

    folder = Path(args.sae)
    if not (folder / "cfg.json").is_file():
        raise FileNotFoundError(f"{folder} is not an SAE folder: no cfg.json in it")
    if args.tokens < 1 or args.batch_rows < 1:
        raise ValueError("--tokens and --batch-rows must be positive")
    device = _resolve_device(args.device)
    sae = SAE.load(folder).to(device)
    model_spec = args.model or _meta(sae, "model_name")
    if not model_spec:
        raise ValueError(f"{folder}/cfg.json names no model (metadata.model_name): pass --model")
    dataset = args.dataset or _meta(sae, "dataset_path") or DEFAULT_DATASET
    context = args.context or _meta(sae, "context_size") or DEFAULT_CONTEXT
    hook_in = args.hook or _meta(sae, "hook_name")
    hook_out = _meta(sae, "hook_name_out") if not args.hook else None

    lm = _load_model(model_spec, device, args.dtype)
    batches = heldout_token_batches(
        dataset,
        lm.tokenizer,
        int(context),
        args.batch_rows,
        prepend_bos=bool(_meta(sae, "prepend_bos", True)),
        exclude_special_tokens=bool(_meta(sae, "exclude_special_tokens", True)),
        holdout_every=args.holdout_every,
    )
    result = evaluate_sae(
        sae,
        lm,
        batches,
        max_tokens=args.tokens,
        hook_name=hook_in,
        hook_name_out=hook_out,
        progress=sys.stderr.isatty(),
    )
    report = {
        **scalar_metrics(result),
        "sae": str(folder),
        "model": model_spec,
        "hook_name": hook_in,
        "hook_name_out": hook_out,
        "dataset": dataset,
        "holdout_every": args.holdout_every,
        "context_size": int(context),
    }
    out_dir = Path(args.out) if args.out else (None if args.json else folder)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / RESULT_FILE, json.dumps(_json_safe(report), indent=2) + "\n")
        plot_density_histogram(
            result["log10_feature_density"], out_dir / HISTOGRAM_FILE, title=str(folder)
        )
    if args.json:
        print(json.dumps(_json_safe(report)))
    else:
        print(format_table(report))
        if out_dir is not None:
            print(f"\nwrote {out_dir / RESULT_FILE} and {out_dir / HISTOGRAM_FILE}")
    return 0


_TABLE_ROWS = (
    ("tokens", "tokens evaluated (kept positions)"),
    ("l0", "L0 (active features per token)"),
    ("mse", "MSE (per element)"),
    ("explained_variance", "explained variance"),
    ("fvu", "fraction of variance unexplained"),
    ("cos_sim", "cosine similarity"),
    ("l2_ratio", "L2 norm ratio |x_hat|/|x|"),
    ("ce_loss_clean", "CE loss, clean"),
    ("ce_loss_spliced", "CE loss, SAE spliced in"),
    ("ce_loss_zero_ablation", "CE loss, zero ablation"),
    ("ce_loss_mean_ablation", "CE loss, mean ablation"),
    ("ce_loss_recovered", "CE loss recovered (vs zero abl.)"),
    ("ce_loss_recovered_mean_ablation", "CE loss recovered (vs mean abl.)"),
    ("kl_div", "KL(clean || spliced) per token"),
    ("dead_fraction", "dead features (never fired)"),
    ("dense_fraction", f"dense features (density > {DENSE_THRESHOLD})"),
)


def format_table(report: dict[str, Any]) -> str:
    """A readable two-column table of an evaluation report."""
    head = [
        f"SAE      {report['sae']}",
        f"model    {report['model']}  hook {report['hook_name']}"
        + (f" -> {report['hook_name_out']}" if report.get("hook_name_out") else ""),
        f"dataset  {report['dataset']} (every {report['holdout_every']}th document)"
        if report["holdout_every"]
        else f"dataset  {report['dataset']} (all documents)",
        "",
    ]
    rows = []
    for key, label in _TABLE_ROWS:
        value = report[key]
        shown = f"{value:d}" if isinstance(value, int) else f"{value:.4g}"
        rows.append(f"{label:<36} {shown:>12}")
    return "\n".join(head + rows)


def plot_density_histogram(log10_density_F: torch.Tensor, path: Path, title: str = "") -> None:
    """Write a PNG histogram of log10 feature density (dead features in the leftmost bin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts, edges = density_histogram(log10_density_F)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stairs(counts.numpy(), edges.numpy(), fill=True)
    ax.set_xlabel("log10 feature density (fraction of tokens a feature fires on)")
    ax.set_ylabel("features")
    dead = int((log10_density_F <= edges[0] + 1e-9).sum())
    n = log10_density_F.numel()
    ax.set_title(f"{title}\n{n} features, {dead} dead ({dead / n:.1%})" if n else title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def _json_safe(report: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf (e.g. CE loss recovered when ablation changes nothing) become null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in report.items()
    }

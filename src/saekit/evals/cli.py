"""`saekit eval SAE...`: the core metrics of one SAE as a table + PNG or JSON, or the suite."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from saekit.data.datasets import HOLDOUT_EVERY
from saekit.data.provenance import (
    DataSettings,
    Provenance,
    add_data_arguments,
    settings_for_sae,
    token_batches,
)
from saekit.dtypes import DTYPES
from saekit.evals.baseline import BaselineStore
from saekit.evals.evaluate import evaluate_sae, scalar_metrics
from saekit.evals.metrics import DENSE_THRESHOLD
from saekit.evals.suite_cli import REPORT_FILE, add_suite_arguments, run_suite_command
from saekit.fileio import atomic_write_text
from saekit.models.loading import resolve_device
from saekit.settings import count_arg

HISTOGRAM_FILE = "feature_density.png"
RESULT_FILE = "eval.json"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` sub-command (`eval-suite` is another name for `eval --suite all`)."""
    parser = subparsers.add_parser(
        "eval",
        aliases=["eval-suite"],
        help="evaluate saved SAEs: core metrics (L0, explained variance, CE loss recovered, "
        "KL, density), sparse probing, feature absorption; several side by side",
        description="Evaluate SAE folders (saekit or SAELens layout), or sweep folders holding "
        "them. The data settings (model, hook, dataset, context, BOS and special-token "
        "conventions, holdout rule) come from each folder's provenance record unless given; "
        f"by default the held-back documents (every {HOLDOUT_EVERY}th) are used. One SAE "
        f"without --suite: the core metrics as a table, {RESULT_FILE} and {HISTOGRAM_FILE}. "
        "With --suite core,probing,absorption (or several SAEs): one JSON per SAE with "
        "SAEBench's key names and, for several, a comparison table and plots.",
    )
    parser.add_argument(
        "saes", nargs="+", metavar="SAE", help="SAE folder (cfg.json + sae_weights), or a "
        "folder of SAE folders (a sweep); one CLT or crosscoder folder, or a run folder of "
        "per-layer transcoders, is evaluated as a replacement model (without --suite)",
    )  # fmt: skip
    add_data_arguments(parser, for_sae=True)
    parser.add_argument(
        "--tokens", type=count_arg, default=16_384, metavar="N",
        help="core: evaluation tokens: 16384, 16k, 1M (default: 16384)",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument(
        "--out",
        help=f"folder for the reports (default: the SAE folder gets {RESULT_FILE} or "
        f"{REPORT_FILE}, a sweep's comparison goes to the SAEs' common parent; with --json and "
        "one SAE without --suite nothing is written unless --out is given)",
    )
    add_suite_arguments(parser)
    parser.set_defaults(func=run_eval_command)


def run_eval_command(args: argparse.Namespace) -> int:
    """One folder without --suite: a CLT, crosscoder or transcoder set as a replacement model,
    else one SAE's core table; otherwise (--suite, several SAEs, a sweep) the suite."""
    from saekit.evals.dictionaries import dictionary_kind, run_dictionary_eval

    first = Path(args.saes[0])
    if args.suite is None and args.command == "eval" and len(args.saes) == 1:
        if args.tokens < 1:
            raise ValueError("--tokens must be positive")
        kind = dictionary_kind(first)  # a CLT, a transcoder set or a crosscoder
        if kind is not None and (kind != "transcoders" or _all_transcoders(first)):
            return run_dictionary_eval(args, first, kind)
        if (first / "cfg.json").is_file() or not first.is_dir():
            return run_core_eval(args)
    return run_suite_command(args)  # a sweep folder of plain SAEs comes here too


def _all_transcoders(folder: Path) -> bool:
    """Whether every SAE folder in `folder` writes another hook than it reads."""
    cfgs = sorted(folder.glob("*/cfg.json"))
    metas = [json.loads(c.read_text()).get("metadata") or {} for c in cfgs]
    return bool(metas) and all(m.get("hook_name_out") for m in metas)


def _load_model(data: DataSettings, device):
    from saekit.models import load_model

    try:
        return load_model(data.model, device=device, dtype=DTYPES[data.dtype])
    except (ValueError, FileNotFoundError, KeyError):
        raise
    except (OSError, ImportError) as err:
        raise ValueError(f"cannot load model {data.model!r}: {err}") from err


def run_core_eval(args: argparse.Namespace) -> int:
    """Load one SAE and its model, evaluate the core metrics, and report."""
    from saekit.saes import SAE

    folder = Path(args.saes[0])
    if not (folder / "cfg.json").is_file():
        raise FileNotFoundError(f"{folder} is not an SAE folder: no cfg.json in it")
    if args.tokens < 1:
        raise ValueError("--tokens must be positive")
    device = resolve_device(getattr(args, "device", "auto"))
    sae = SAE.load(folder).to(device)
    data, sources = settings_for_sae(sae, args)
    if sources["model"] == "default":
        raise ValueError(f"{folder}/cfg.json names no model (metadata.model_name): pass --model")
    if not data.hooks:
        raise ValueError(f"{folder}/cfg.json names no hook (metadata.hook_name): pass --hook")
    hook_in = data.hooks[0]
    hook_out = sae.cfg.metadata.hook_name_out if sources["hooks"] != "flag" else None

    lm = _load_model(data, device)
    part = "heldout" if data.holdout_every else "all"
    result = evaluate_sae(
        sae,
        lm,
        token_batches(data, lm.tokenizer, data.forward_rows, part),
        max_tokens=args.tokens,
        hook_name=hook_in,
        hook_name_out=hook_out,
        progress=sys.stderr.isatty(),
        baselines=BaselineStore.default(),
    )
    report = {
        **scalar_metrics(result),
        "sae": str(folder),
        "model": data.model,
        "hook_name": hook_in,
        "hook_name_out": hook_out,
        "dataset": data.dataset,
        "holdout_every": data.holdout_every,
        "context_size": data.context,
        "exclude_special_tokens": data.exclude_special_tokens,
        "exclude_special_tokens_from": sources["exclude_special_tokens"],
        "provenance": Provenance.of(data).to_dict(),
    }
    out_dir = Path(args.out) if args.out else (None if args.json else folder)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / RESULT_FILE, json.dumps(_json_safe(report), indent=2) + "\n")
        from saekit.training.report import plot_density_histogram

        plot_density_histogram(
            {str(folder): result["log10_feature_density"]}, out_dir / HISTOGRAM_FILE,
            window=f"{int(result['tokens']):,} held-back tokens",
        )
    if args.json:
        print(json.dumps(_json_safe(report)))
    else:
        print(format_table(report))
        if out_dir is not None:
            print(f"\nwrote {out_dir / RESULT_FILE} and {out_dir / HISTOGRAM_FILE}")
    broken = [k for k in MUST_BE_FINITE if not math.isfinite(report[k])]
    if broken:
        print(
            f"saekit eval: error: {', '.join(broken)} not finite: the SAE's outputs hold NaN/inf",
            file=sys.stderr,
        )
        return 3
    return 0


# Metrics that are finite for any SAE whose outputs are (CE loss recovered may be undefined).
MUST_BE_FINITE = ("mse", "explained_variance", "l0", "ce_loss_spliced", "kl_div")


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
    ("dead_fraction", "dead features (never fired in these tokens)"),
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
        f"tokens   {_special_tokens_line(report)}",
        "",
    ]
    rows = []
    for key, label in _TABLE_ROWS:
        value = report[key]
        shown = f"{value:d}" if isinstance(value, int) else f"{value:.4g}"
        se = report.get(f"{key}_se")
        error = f" +- {se:.2g}" if isinstance(se, float) and math.isfinite(se) else ""
        rows.append(f"{label:<36} {shown:>12}{error}")
    rows.append("(+- one bootstrap standard error over the documents evaluated)")
    return "\n".join(head + rows)


def _special_tokens_line(report: dict[str, Any]) -> str:
    what = "excluded (BOS/EOS/pad left clean, not counted)"
    if not report["exclude_special_tokens"]:
        what = "included (BOS/EOS/pad spliced and counted)"
    origin = {"flag": "set by flag", "SAE folder": "as recorded in the SAE folder",
              "default": "default: the SAE folder does not record it"}  # fmt: skip
    return f"special tokens {what}; {origin[report['exclude_special_tokens_from']]}"


def _json_safe(report: dict[str, Any]) -> dict[str, Any]:
    """NaN/inf (e.g. CE loss recovered when ablation changes nothing) become null."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in report.items()
    }

"""`saekit eval-suite SAE...`: core metrics, sparse probing and absorption, side by side."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from saekit.evals.labelled import DEFAULT_DATASETS
from saekit.evals.probing import K_VALUES
from saekit.evals.suite import SUITES, SuiteSettings
from saekit.fileio import atomic_write_text

REPORT_FILE = "eval_suite.json"
COMPARISON_FILE = "eval_suite_comparison.txt"


def _list(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return parse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval-suite` sub-command."""
    p = subparsers.add_parser(
        "eval-suite",
        help="downstream evaluation of SAEs: core metrics, sparse probing, feature absorption",
        description="Evaluate one or more SAE folders (or sweep folders holding them) with "
        "core metrics, SAEBench's sparse probing and first-letter absorption, offline. SAEs on "
        "the same hook share every model pass. Writes one JSON per SAE and, for several SAEs, "
        "a comparison table and plots.",
    )
    p.add_argument("saes", nargs="+", metavar="SAE", help="SAE folder, or a folder of SAE folders")
    p.add_argument(
        "--suite",
        type=_list(str),
        default=SUITES,
        help=f"comma list of {','.join(SUITES)} (default: all)",
    )
    p.add_argument("--model", help="model spec (default: the SAEs' cfg.json metadata.model_name)")
    p.add_argument(
        "--datasets",
        type=_list(str),
        default=DEFAULT_DATASETS,
        help="labelled datasets for probing: builtins, .jsonl files (text, label) or "
        f"SAEBench hub ids (default: {','.join(DEFAULT_DATASETS)})",
    )
    p.add_argument(
        "--k",
        type=_list(int),
        default=K_VALUES,
        help=f"probe sizes (default: {','.join(map(str, K_VALUES))})",
    )
    p.add_argument("--train-per-class", type=int, default=100, help="train texts per class (100)")
    p.add_argument("--test-per-class", type=int, default=40, help="test texts per class (40)")
    p.add_argument("--tokens", type=int, default=8192, help="core: evaluation tokens (8192)")
    p.add_argument("--dataset", help="core: dataset (default: cfg.json, else builtin:python-docs)")
    p.add_argument(
        "--words",
        type=int,
        default=3000,
        help="absorption: vocabulary words sampled, 0 for all (3000)",
    )
    p.add_argument("--icl", type=int, default=10, help="absorption: in-context examples (10)")
    p.add_argument(
        "--words-per-prompt",
        type=int,
        default=8,
        help="absorption: query words packed per prompt; 1 is SAEBench's prompt (8)",
    )
    p.add_argument(
        "--absorption-max-k",
        type=int,
        default=10,
        help="absorption: largest k-sparse probe searched for main features (10)",
    )
    p.add_argument("--batch-rows", type=int, default=16, help="texts per forward (16)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="float32", help="model dtype (float32)")
    p.add_argument(
        "--no-cache", action="store_true", help="neither read nor write cached activations"
    )
    p.add_argument(
        "--out",
        help=f"folder for the reports (default: each SAE's folder gets "
        f"{REPORT_FILE}; comparisons go to the SAEs' common parent)",
    )
    p.add_argument("--json", action="store_true", help="print all reports as one JSON object")
    p.set_defaults(func=run_suite_command)


def find_sae_folders(paths: list[str]) -> list[Path]:
    """SAE folders named directly, or found (sorted) under sweep folders."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if (path / "cfg.json").is_file():
            found.append(path)
        elif path.is_dir():
            inner = sorted(
                (p.parent for p in path.rglob("cfg.json") if "checkpoints" not in p.parts),
                key=_natural,
            )
            if not inner:
                raise FileNotFoundError(f"{path} holds no SAE folder (no cfg.json under it)")
            found += inner
        else:
            raise FileNotFoundError(f"{path} is not an SAE folder or a folder of SAE folders")
    return list(dict.fromkeys(found))


def _natural(path: Path) -> list:
    """Sort key in which k16 comes before k128."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def sae_names(folders: list[Path]) -> dict[str, Path]:
    """Short unique names: paths relative to the folders' common parent, less the prefix
    they all share (a sweep's `blocks.15.hook_resid_pre-topk-k16` becomes `k16`)."""
    if len(folders) == 1:
        return {folders[0].name: folders[0]}
    root = Path(os.path.commonpath([str(f.resolve()) for f in folders]))
    names = [str(f.resolve().relative_to(root)) for f in folders]
    prefix = os.path.commonprefix(names)
    cut = max(prefix.rfind(sep) for sep in "-_/.") + 1
    short = [n[cut:] for n in names]
    if all(short) and len(set(short)) == len(short):
        names = short
    return dict(zip(names, folders, strict=True))


def run_suite_command(args: argparse.Namespace) -> int:
    """Load the SAEs and their model, run the suite, write and print the reports."""
    import torch

    from saekit.dtypes import DTYPES
    from saekit.evals.conventions import sae_conventions
    from saekit.evals.pooling import default_cache
    from saekit.evals.report import format_comparison, plot_comparison
    from saekit.evals.suite import run_suite
    from saekit.io.load import load_sae
    from saekit.models import load_model

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype!r} is not one of {sorted(DTYPES)}")
    folders = sae_names(find_sae_folders(args.saes))
    saes = {name: load_sae(folder, device=device) for name, folder in folders.items()}
    models = {sae_conventions(s).model_name for s in saes.values()}
    model_spec = args.model or (models.pop() if len(models) == 1 else None)
    if not model_spec:
        raise ValueError(f"the SAEs name {sorted(map(str, models))} as their model: pass --model")
    settings = SuiteSettings(
        suites=args.suite, datasets=args.datasets, k_values=args.k,
        train_per_class=args.train_per_class, test_per_class=args.test_per_class,
        core_tokens=args.tokens, core_dataset=args.dataset,
        absorption_words=args.words or None, n_icl=args.icl,
        words_per_prompt=args.words_per_prompt, absorption_max_k=args.absorption_max_k,
        batch_rows=args.batch_rows, seed=args.seed,
        progress=sys.stderr.isatty(), cache=None if args.no_cache else default_cache(),
    )  # fmt: skip
    lm = load_model(model_spec, device=device, dtype=DTYPES[args.dtype])
    reports = run_suite(lm, saes, settings)
    out = Path(args.out) if args.out else None
    for name, report in reports.items():
        report["sae"] = str(folders[name])
        path = out / f"{name.replace('/', '__')}.json" if out else folders[name] / REPORT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(_json_safe(report), indent=2) + "\n")
    table = format_comparison(reports)
    written = []
    if len(reports) > 1 or out:
        cmp_dir = out or Path(os.path.commonpath([str(f.resolve()) for f in folders.values()]))
        atomic_write_text(cmp_dir / COMPARISON_FILE, table + "\n")
        written = [cmp_dir / COMPARISON_FILE, *plot_comparison(reports, cmp_dir)]
    if args.json:
        print(json.dumps(_json_safe(reports)))
        return 0
    print(table)
    where = out if out else f"{REPORT_FILE} in each SAE folder"
    print(f"\nwrote the reports to {where}" + "".join(f"\n  {p}" for p in written))
    return 0


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null; tensors and numpy values become plain numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

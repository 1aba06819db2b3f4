"""`saekit eval SAE... --suite core,probing,absorption`: the suite's flags, run and reports.

`saekit.evals.cli` registers the one `eval` command; this module adds the suite's own flags
to it and runs the suite when `--suite` is given or several SAEs are named. The data flags
(`--model --device --dtype --dataset --context ...`) are the shared ones of
`saekit.data.provenance.add_data_arguments`: a flag given overrides every SAE folder's record.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from saekit.evals.probing import K_VALUES
from saekit.evals.suite import SUITES, SuiteSettings
from saekit.fileio import atomic_write_text

REPORT_FILE = "eval_suite.json"
COMPARISON_FILE = "eval_suite_comparison.txt"
_DEFAULTS = SuiteSettings()


def _list(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return parse


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's flags (what runs and on how much data), added to `saekit eval`."""
    g = p.add_argument_group("suite (sparse probing, absorption; see docs/evaluation.md)")
    g.add_argument(
        "--suite", type=_list(str), default=None, metavar="A[,B...]",
        help=f"comma list of {','.join(SUITES)}, or all. Given, or with several SAEs, each SAE "
        f"gets {REPORT_FILE} with SAEBench's key names (default: core)",
    )  # fmt: skip
    g.add_argument(
        "--datasets", type=_list(str), default=_DEFAULTS.datasets, metavar="D[,D...]",
        help="probing: labelled datasets, builtins, .jsonl files (text, label) or SAEBench hub "
        f"ids (default: {','.join(_DEFAULTS.datasets)})",
    )  # fmt: skip
    g.add_argument("--k", type=_list(int), default=_DEFAULTS.k_values, metavar="K[,K...]",
                   help=f"probing: probe sizes (default: {','.join(map(str, K_VALUES))})")  # fmt: skip
    g.add_argument("--train-per-class", type=int, default=_DEFAULTS.train_per_class, metavar="N",
                   help=f"probing: train texts per class ({_DEFAULTS.train_per_class})")  # fmt: skip
    g.add_argument("--test-per-class", type=int, default=_DEFAULTS.test_per_class, metavar="N",
                   help=f"probing: test texts per class ({_DEFAULTS.test_per_class})")  # fmt: skip
    g.add_argument("--words", type=int, default=_DEFAULTS.absorption_words, metavar="N",
                   help="absorption: vocabulary words sampled, 0 for all "
                   f"({_DEFAULTS.absorption_words})")  # fmt: skip
    g.add_argument("--icl", type=int, default=_DEFAULTS.n_icl, metavar="N",
                   help=f"absorption: in-context examples ({_DEFAULTS.n_icl})")  # fmt: skip
    g.add_argument("--words-per-prompt", type=int, default=_DEFAULTS.words_per_prompt,
                   metavar="N", help="absorption: query words packed per prompt; 1 is "
                   f"SAEBench's prompt ({_DEFAULTS.words_per_prompt})")  # fmt: skip
    g.add_argument("--absorption-max-k", type=int, default=_DEFAULTS.absorption_max_k,
                   metavar="N", help="absorption: largest k-sparse probe searched for main "
                   f"features ({_DEFAULTS.absorption_max_k})")  # fmt: skip
    g.add_argument("--seed", type=int, default=_DEFAULTS.seed,
                   help=f"probing and absorption samples ({_DEFAULTS.seed})")  # fmt: skip
    g.add_argument("--no-cache", action="store_true",
                   help="neither read nor write cached activations and baselines")  # fmt: skip


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


def chosen_suites(args: argparse.Namespace) -> tuple[str, ...]:
    """`--suite` as a tuple; `all` stands for every part; unknown names are a one-line error."""
    suites = args.suite or (SUITES if args.command == "eval-suite" else ("core",))
    if "all" in suites:
        return SUITES
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"--suite {','.join(unknown)}: choose from {', '.join(SUITES)} or all")
    return tuple(dict.fromkeys(suites))


def _apply_data_flags(saes: dict[str, Any], folders: dict[str, Path], args) -> str:
    """Every SAE's provenance record overridden by the data flags given; the one model spec."""
    from saekit.data.provenance import settings_for_sae

    models = set()
    for name, sae in saes.items():
        data, sources = settings_for_sae(sae, args)
        if sources["model"] == "default":
            raise ValueError(f"{folders[name]}/cfg.json names no model (metadata.model_name): "
                             "pass --model")  # fmt: skip
        if not data.hooks:
            raise ValueError(f"{folders[name]}/cfg.json names no hook (metadata.hook_name): "
                             "pass --hook")  # fmt: skip
        meta = sae.cfg.metadata
        hook_out = meta.hook_name_out if sources["hooks"] != "flag" else None
        data.write_metadata(meta, data.hooks[0], hook_out)  # what the suite reads, flags applied
        models.add((data.model, data.dtype, data.forward_rows))
    if len(models) > 1:
        raise ValueError(f"the SAEs name different models {sorted(m for m, _, _ in models)}: "
                         "pass --model (and --dtype)")  # fmt: skip
    return models.pop()


def run_suite_command(args: argparse.Namespace) -> int:
    """Load the SAEs and their model, run the suite, write and print the reports."""
    from saekit.dtypes import DTYPES
    from saekit.evals.baseline import BaselineStore
    from saekit.evals.pooling import PooledCache, default_cache
    from saekit.evals.report import format_comparison, plot_comparison
    from saekit.evals.suite import run_suite
    from saekit.io.load import load_sae
    from saekit.models import load_model
    from saekit.models.loading import resolve_device

    suites = chosen_suites(args)
    if args.tokens < 1:
        raise ValueError("--tokens must be positive")
    device = resolve_device(getattr(args, "device", "auto"))
    folders = sae_names(find_sae_folders(args.saes))
    saes = {name: load_sae(folder, device=str(device)) for name, folder in folders.items()}
    model_spec, dtype, forward_rows = _apply_data_flags(saes, folders, args)
    settings = SuiteSettings(
        suites=suites, datasets=args.datasets, k_values=args.k,
        train_per_class=args.train_per_class, test_per_class=args.test_per_class,
        core_tokens=args.tokens, absorption_words=args.words or None, n_icl=args.icl,
        words_per_prompt=args.words_per_prompt, absorption_max_k=args.absorption_max_k,
        batch_rows=forward_rows, seed=args.seed, progress=sys.stderr.isatty(),
        cache=PooledCache(None) if args.no_cache else default_cache(),
        baselines=BaselineStore() if args.no_cache else BaselineStore.default(),
    )  # fmt: skip
    lm = load_model(model_spec, device=device, dtype=DTYPES[dtype])
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

"""`saekit train`: flags and an optional YAML/JSON file become one validated TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from saekit.training.config import TrainConfig, field_docs, load_config_file

# Flags whose name differs from the config field (the field holds a comma list for sweeps).
FLAG_TO_FIELD = {"hook": "hooks", "arch": "archs", "d_sae": "d_saes", "k": "ks", "l1": "l1s"}
FIELD_TO_FLAG = {v: k for k, v in FLAG_TO_FIELD.items()}
COUNT_FIELDS = {
    "tokens", "batch_tokens", "buffer_tokens", "checkpoint_every", "eval_every_tokens",
    "eval_tokens", "init_tokens", "lr_warmup_tokens", "sparsity_warmup_tokens",
    "dead_after_tokens", "resample_every_tokens",
}  # fmt: skip
# Settings that may change on --resume: they do not change what is computed.
RESUME_SAFE = {"out", "device", "threads", "progress", "sae_placement", "dist_timeout"}


def parse_count(text: str) -> int:
    """'409600', '400k', '1.5M' -> an int."""
    text = text.strip().lower().replace("_", "")
    scale = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    number = float(text[:-1] if scale != 1 else text)
    if number != int(number * scale) / scale:
        raise argparse.ArgumentTypeError(f"not a whole count: {text}")
    return int(number * scale)


def _split(kind):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _setting(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train SAE(s) on a model's activations (no flags: the embedded default)",
        description="Train sparse autoencoders. With no flags: smollm2-135m, its middle "
        "hook_resid_pre, builtin:python-docs, topk k=32, 8x expansion. Comma lists in "
        "--hook/--arch/--k/--l1/--d-sae train a sweep from one model pass.",
        argument_default=argparse.SUPPRESS,
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run_train_command)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, help from the field's docstring."""
    docs = field_docs()
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--nproc", type=int, help="data-parallel processes on this machine: runs this command "
        "under torchrun (torch.distributed.run --standalone --nproc-per-node N)",
    )  # fmt: skip
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + FIELD_TO_FLAG.get(f.name, f.name).replace("_", "-")
        default = f.default
        help_text = f"{docs.get(f.name, '')} (default: {_show(default)})".replace("%", "%%")
        if f.name in FLAG_TO_FIELD.values():
            kind = {"d_saes": int, "ks": int, "l1s": float}.get(f.name, str)
            parser.add_argument(flag, dest=f.name, type=_split(kind), help=help_text)
        elif f.name == "sae_settings":
            parser.add_argument(
                "--sae-setting", dest="sae_settings", type=_setting, action="append",
                metavar="KEY=VALUE", help=help_text,
            )  # fmt: skip
        elif f.name == "adam_betas":
            parser.add_argument(flag, dest=f.name, type=_split(float), help=help_text)
        elif isinstance(default, bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif f.name in COUNT_FIELDS:
            parser.add_argument(flag, dest=f.name, type=parse_count, help=help_text)
        elif f.name == "expansion_factor":
            parser.add_argument(flag, dest=f.name, type=int, help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, dest=f.name, type=kind, help=help_text)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "auto"
    return "auto" if value is None else str(value)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- config file <- flags; on --resume, the run folder's saved settings."""
    given = {k: v for k, v in vars(args).items() if k not in {"command", "func", "config", "resume", "nproc"}}
    if "sae_settings" in given:
        given["sae_settings"] = tuple(given["sae_settings"])
    if getattr(args, "resume", False):
        if "config" in args:
            raise ValueError("--resume takes the settings saved in the run folder, not --config")
        changed = sorted(set(given) - RESUME_SAFE)
        if changed:
            flags = ", ".join("--" + FIELD_TO_FLAG.get(k, k).replace("_", "-") for k in changed)
            raise ValueError(f"--resume keeps the run's saved settings; remove {flags}")
        if "out" not in given:
            raise ValueError("--resume needs --out DIR, the run folder to continue")
        saved = Path(given["out"]) / "train_config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"nothing to resume: {saved} does not exist")
        settings = json.loads(saved.read_text())
        settings.update(given)
        return TrainConfig.from_dict(settings)
    settings = load_config_file(args.config) if "config" in args else {}
    settings.update(given)
    return TrainConfig.from_dict(settings)


def run_train_command(args: argparse.Namespace) -> int:
    """Handler of `saekit train`."""
    from saekit.training.distributed import DistributedError, launch_torchrun
    from saekit.training.run import train
    from saekit.training.trainer import NonFiniteLossError, TrainingInterrupted

    cfg = config_from_args(args)
    if getattr(args, "nproc", 1) > 1:
        return launch_torchrun(cfg, args.nproc, resume=getattr(args, "resume", False))
    try:
        result = train(cfg, resume=getattr(args, "resume", False))
    except DistributedError as err:
        print(f"saekit train: error: {err}", file=sys.stderr)
        return 4
    except TrainingInterrupted as err:
        print(f"saekit train: {err}", file=sys.stderr)
        return 130
    except NonFiniteLossError as err:
        print(f"saekit train: error: {err}", file=sys.stderr)
        return 3
    if result.summary:  # empty on ranks other than 0
        print(result.summary)
    return 0

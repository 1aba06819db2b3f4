"""`saekit train`: flags and an optional YAML/JSON file become one validated TrainConfig."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from saekit import settings
from saekit.training.config import TrainConfig

# Flags whose name differs from the config field (the field holds a comma list for sweeps).
FLAG_RENAMES = {"hooks": "hook", "archs": "arch", "d_saes": "d_sae", "ks": "k", "l1s": "l1",
                "sae_settings": "sae_setting"}
# Settings that may change on --resume: they do not change what is computed.
RESUME_SAFE = {"out", "device", "threads", "progress", "sae_placement", "dist_timeout"}


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
    """One flag per TrainConfig field (saekit.settings), help from the field's docstring."""
    parser.add_argument("--config", help="YAML or JSON file of settings (flags override it)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    parser.add_argument(
        "--nproc", type=int, help="data-parallel processes on this machine: runs this command "
        "under torchrun (torch.distributed.run --standalone --nproc-per-node N)",
    )  # fmt: skip
    settings.add_arguments(parser, TrainConfig, renames=FLAG_RENAMES, skip=("sae_settings",))
    doc = settings.field_docs(TrainConfig)["sae_settings"]
    parser.add_argument(
        "--sae-setting", dest="sae_settings", type=_setting, action="append",
        metavar="KEY=VALUE", help=doc, default=argparse.SUPPRESS,
    )  # fmt: skip


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults <- config file <- flags; on --resume, the run folder's saved settings."""
    given = settings.given(args, TrainConfig)
    if getattr(args, "resume", False):
        if "config" in args:
            raise ValueError("--resume takes the settings saved in the run folder, not --config")
        changed = sorted(set(given) - RESUME_SAFE)
        if changed:
            flags = ", ".join(settings.flag_name(k, FLAG_RENAMES) for k in changed)
            raise ValueError(f"--resume keeps the run's saved settings; remove {flags}")
        if "out" not in given:
            raise ValueError("--resume needs --out DIR, the run folder to continue")
        saved = Path(given["out"]) / "train_config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"nothing to resume: {saved} does not exist")
        values = json.loads(saved.read_text())
        values.update(given)
        return TrainConfig.from_dict(values)
    values = settings.load_config_file(args.config) if "config" in args else {}
    values.update(given)
    return TrainConfig.from_dict(values)


def run_train_command(args: argparse.Namespace) -> int:
    """Handler of `saekit train`."""
    from saekit.training.distributed import DistributedError
    from saekit.training.run import train
    from saekit.training.trainer import NonFiniteLossError, TrainingInterrupted

    cfg = config_from_args(args)
    summary = Path(cfg.out) / "summary.txt"
    if getattr(args, "resume", False) and summary.is_file():  # nothing left to continue
        print(f"saekit train: {cfg.out} holds a finished run; nothing to resume\n")
        print(summary.read_text().rstrip())
        return 0
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


def launch_torchrun(cfg: TrainConfig, nproc: int, resume: bool = False) -> int:
    """`saekit train --nproc N`: run the same training under torchrun on this machine.

    The resolved settings travel in a temporary JSON config (on resume: the run folder and
    the settings that may change on resume). Returns torchrun's exit status.
    """
    from saekit.training.distributed import launched_by_torchrun

    if launched_by_torchrun():
        raise ValueError("--nproc starts torchrun itself; under torchrun, leave it out")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "saekit", "train"]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="saekit-launch-") as tmp:
        if resume:
            command += ["--resume", "--out", cfg.out, "--device", cfg.device,
                        "--threads", str(cfg.threads), "--sae-placement", cfg.sae_placement,
                        "--dist-timeout", str(cfg.dist_timeout),
                        "--progress" if cfg.progress else "--no-progress"]  # fmt: skip
        else:
            config = os.path.join(tmp, "train_config.json")
            with open(config, "w") as fh:
                json.dump(cfg.to_dict(), fh)
            command += ["--config", config]
        return subprocess.call(command)

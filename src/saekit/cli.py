"""The `saekit` command line: one parser, each area registers its own sub-commands."""

from __future__ import annotations

import argparse
import importlib
import sys

from saekit.fileio import DiskFullError

# Each module defines `register(subparsers)`; the sub-command stores its handler in `func`.
COMMAND_MODULES: list[str] = [
    "saekit.training.cli",
    "saekit.data.cli",
    "saekit.evals.cli",
    "saekit.analysis.cli",
    "saekit.io.cli",
    "saekit.circuits.cli",
    "saekit.toy",
    "saekit.export.cli",
    "saekit.steering.cli",
    "saekit.autointerp.cli",
    "saekit.serve.cli",
]


def build_parser() -> argparse.ArgumentParser:
    """The full `saekit` parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="saekit",
        description="Train, load, evaluate and analyse sparse autoencoders on LM activations.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `saekit` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, ModuleNotFoundError, DiskFullError) as err:
        from saekit.settings import with_flag_names
        from saekit.training.cli import FLAG_RENAMES
        from saekit.training.config import TrainConfig

        message = with_flag_names(str(err), TrainConfig, FLAG_RENAMES)  # flags, not field names
        print(f"saekit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

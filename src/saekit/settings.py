"""Settings dataclasses -> command-line flags, config files and validated values.

A settings class is a frozen dataclass whose field docstrings become the `--help` text.
Fields annotated `Count` take token counts written as 409600, 400k, 1M or 1.5M, on the
command line and in YAML/JSON files alike. Tuple fields take comma lists (`--k 16,32`) and
may be repeated (`--hook a --hook b`). Every command builds its flags here, so one setting
has one flag name, one default and one help text everywhere.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
from pathlib import Path
from typing import Any

import yaml

Count = int  # a token count: accepts 400k / 1M / 1.5M (fields annotated `Count`)

_SCALES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}


def parse_count(text: str | int | float) -> int:
    """409600, '400k', '1.5M', '1e6' -> an int; a clear error for anything else."""
    if isinstance(text, bool):
        raise ValueError(f"not a count: {text!r}")
    if isinstance(text, int):
        return text
    raw = str(text).strip().lower().replace("_", "").replace(",", "")
    scale = _SCALES.get(raw[-1:], 1)
    try:
        number = float(raw[:-1] if scale != 1 else raw)
    except ValueError:
        raise ValueError(f"not a count: {text!r} (write e.g. 409600, 400k, 1M or 1.5M)") from None
    value = number * scale
    if not math.isfinite(value):
        raise ValueError(f"not a count: {text!r} (write e.g. 409600, 400k, 1M or 1.5M)")
    if value != int(value):
        raise ValueError(f"not a whole count: {text!r}")
    return int(value)


def count_arg(text: str) -> int:
    try:
        return parse_count(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it, for `cls` and its dataclass bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())  # type: ignore[union-attr]
    return docs


def _kind(f: dataclasses.Field) -> str:
    """'count', 'bool', 'int', 'float', 'str', 'pairs' or 'tuple:<item>', from the annotation;
    '?' appended when None is allowed."""
    t = str(f.type).replace(" ", "")
    optional = t.endswith("|None")
    t = t.removesuffix("|None")
    if t.startswith("tuple[tuple["):
        kind = "pairs"
    elif t.startswith("tuple["):
        kind = "tuple:" + t[len("tuple[") :].split(",")[0].rstrip("]")
    else:
        kind = {"Count": "count", "bool": "bool", "int": "int", "float": "float"}.get(t, "str")
    return kind + ("?" if optional else "")


def _convert(kind: str, value: Any, name: str) -> Any:
    """A value from a file, a flag or Python into the field's type; ValueError naming `name`."""
    if kind.endswith("?"):
        return None if value is None else _convert(kind[:-1], value, name)

    def bad(expected: str) -> ValueError:
        return ValueError(f"{name}: expected {expected}, got {value!r}")

    if kind == "count":
        if isinstance(value, (bool, type(None), list, dict)):
            raise bad("a token count (409600, 400k, 1M)")
        try:
            return parse_count(value)
        except (ValueError, OverflowError) as err:
            raise ValueError(f"{name}: {err}") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad("a number")
        try:
            number = float(value) if kind == "float" else int(value)
        except (ValueError, OverflowError):
            raise bad("a number") from None
        if kind == "int" and isinstance(value, float) and value != number:
            raise bad("a whole number")
        return number
    if kind == "str":
        if not isinstance(value, str):
            raise bad("text")
        return value
    if kind == "pairs":
        items = value.items() if isinstance(value, dict) else value
        if not isinstance(items, (list, tuple, type({}.items()))):
            raise bad("KEY=VALUE settings")
        pairs = []
        for item in items:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
                raise bad("KEY=VALUE settings")
            pairs.append((item[0], item[1]))
        return tuple(pairs)
    if kind.startswith("tuple:"):
        item = kind.split(":", 1)[1]
        if isinstance(value, str):
            parts: list[Any] = [p.strip() for p in value.split(",") if p.strip()]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise bad("a list (or a comma list)")
        return tuple(_convert(item, part, name) for part in parts)
    raise ValueError(f"{name}: unknown setting kind {kind!r}")


def flag_name(field_name: str, renames: dict[str, str] | None = None) -> str:
    """The command-line flag of a field (`forward_rows` -> `--forward-rows`)."""
    return "--" + (renames or {}).get(field_name, field_name).replace("_", "-")


def with_flag_names(message: str, cls: type, renames: dict[str, str] | None = None) -> str:
    """`message` with the settings of `cls` it names written as flags, for the command line.

    Names with an underscore or a flag rename are rewritten wherever they stand as a word
    (`l1s is only used` -> `--l1 is only used`); a plain name (`tokens`) only at the start.
    """
    import re

    for name in sorted((f.name for f in dataclasses.fields(cls)), key=len, reverse=True):
        flag = flag_name(name, renames)
        if "_" in name or name in (renames or {}):
            message = re.sub(rf"(?<![\w.'\"-]){re.escape(name)}(?![\w'\"-])", flag, message)
        elif message.startswith(name + " ") or message.startswith(name + "=") or message.startswith(name + ":"):
            message = flag + message[len(name):]
    return message


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    renames: dict[str, str] | None = None,
    defaults: dict[str, str] | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """One flag per field of `cls` (or of `only`), help from the field docstrings.

    Flags store nothing unless given (`argparse.SUPPRESS`), so callers can tell a flag set to
    its default from one not given. `defaults` overrides the default shown in the help.
    """
    docs = field_docs(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in only or tuple(fields):
        if name in skip:
            continue
        f = fields[name]
        kind = _kind(f).rstrip("?")
        shown = (defaults or {}).get(name, show_default(f.default))
        help_text = f"{docs.get(name, '')} (default: {shown})".replace("%", "%%")
        common = {"dest": name, "help": help_text, "default": argparse.SUPPRESS}
        flag = flag_name(name, renames)
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind.startswith("tuple:"):
            parser.add_argument(
                flag, action="extend", type=_tuple_arg(kind, name), metavar="A[,B...]", **common
            )
        elif kind == "count":
            parser.add_argument(flag, type=count_arg, metavar="N", **common)
        else:
            parser.add_argument(flag, type={"int": int, "float": float}.get(kind, str), **common)


def _tuple_arg(kind: str, name: str):
    def parse(text: str) -> tuple:
        try:
            return _convert(kind, text, name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` set on the command line (tuples for repeated list flags)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}


def build(cls: type, data: dict[str, Any]) -> Any:
    """`cls(**data)`, refusing unknown keys by name and converting values to the field types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ValueError(f"unknown setting(s): {', '.join(unknown)} (known: {known})")
    return cls(**{k: _convert(_kind(fields[k]), v, k) for k, v in data.items()})


def to_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass as a plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(settings)))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file of settings into a dict (keys with - or _ both work)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else f" (line {getattr(err, 'lineno', '?')})"
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}{line}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def show_default(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "auto"
    return "auto" if value is None else str(value)

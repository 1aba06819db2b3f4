"""Prompt templates: plain text files shipped in ``saekit/autointerp/prompts/``.

A template is a chat: lines ``=== system ===``, ``=== user ===`` or ``=== assistant ===`` start
a message; lines starting with ``#`` before the first message are comments. Placeholders
``{examples}``, ``{explanation}`` and ``{n}`` are replaced literally (other braces are kept),
so templates may hold any text. A folder given with ``--prompts`` overrides the shipped files
it holds (``explain.txt``, ``detection.txt``, ``fuzzing.txt``, ``retry.txt``: asked once when
a scorer's answer does not parse).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

TEMPLATE_NAMES = ("explain", "detection", "fuzzing", "retry")
_ROLE = re.compile(r"^=== *(system|user|assistant) *===\s*$")

Messages = list[dict[str, str]]


def parse_template(text: str, source: str = "template") -> Messages:
    """Split a template into chat messages (``{"role", "content"}``), placeholders kept."""
    messages: Messages = []
    for line in text.splitlines():
        m = _ROLE.match(line)
        if m:
            messages.append({"role": m.group(1), "content": ""})
        elif messages:
            messages[-1]["content"] += line + "\n"
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{source}: text before the first '=== role ===' line: {line!r}")
    for msg in messages:
        msg["content"] = msg["content"].strip("\n")
    if not messages or messages[-1]["role"] != "user":
        raise ValueError(f"{source}: a template must end with a '=== user ===' message")
    return messages


def load_templates(folder: str | Path | None = None) -> dict[str, Messages]:
    """The shipped templates, each replaced by ``folder/<name>.txt`` where that file exists."""
    shipped = resources.files("saekit.autointerp") / "prompts"
    out = {}
    for name in TEMPLATE_NAMES:
        path = Path(folder) / f"{name}.txt" if folder is not None else None
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"--prompts {folder}: not a folder")
        if path is not None and path.is_file():
            out[name] = parse_template(path.read_text(encoding="utf-8"), str(path))
        else:
            text = (shipped / f"{name}.txt").read_text(encoding="utf-8")
            out[name] = parse_template(text, f"shipped {name}.txt")
    return out


def fill(template: Messages, **values: str | int) -> Messages:
    """The template with ``{key}`` replaced by each value (in every message)."""
    pattern = re.compile("|".join(r"\{" + re.escape(k) + r"\}" for k in values) or "(?!)")

    def sub(text: str) -> str:  # one pass: inserted text is never substituted again
        return pattern.sub(lambda m: str(values[m.group(0)[1:-1]]), text)

    return [{"role": msg["role"], "content": sub(msg["content"])} for msg in template]

"""Where the builtin labelled datasets come from: real text on this machine, or the hub.

- `fortunes-topic`: the English `fortunes` collection by category (one fortune per text).
- `fortunes-language`: fortunes in twelve languages (Debian's `fortunes-*` packages).
- `code-language`: one snippet per source file: Python (the standard library), Perl (`.pm`
  modules), shell (scripts with a sh/bash shebang, `.sh` files, bash completions), C
  (`/usr/include` headers) and JavaScript (npm's and Debian's `.js` files).
- `python-docs-topic`: standard-library docstrings labelled by their top-level package.

The fortunes live in `/usr/share/games/fortunes` once the Debian packages are installed
(`apt-get install fortunes fortunes-min fortunes-de ...`, see `FORTUNE_PACKAGES`). Where
they are not, the suite fetches the `.deb` files itself (`apt-get download`, no root
needed) and unpacks them under `$SAEKIT_CACHE/evals/debian`.
"""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from saekit.paths import cache_root

SYSTEM_FORTUNES = Path("/usr/share/games/fortunes")
MIN_CHARS = 20  # shorter fortunes (a few words) say little about their class

# Debian package -> a path (relative to the fortunes folder) that shows it is installed.
FORTUNE_PACKAGES = {
    "fortunes": "art", "fortunes-min": "literature", "fortunes-de": "de",
    "fortunes-es": "es", "fortunes-it": "it", "fortunes-br": "brasil", "fortunes-pl": "pl",
    "fortunes-ru": "ru", "fortunes-cs": "cs", "fortunes-bg": "bg", "fortunes-eo": "eo",
    "fortunes-ga": "ga", "fortunes-zh": "chinese",
}  # fmt: skip

TOPIC_CLASSES = (
    "art", "computers", "education", "food", "law", "literature", "love", "politics",
    "science", "sports",
)  # fmt: skip
"""Categories with at least 140 fortunes (`medicine`, 74, is too small for the default split)."""

ENGLISH_FILES = TOPIC_CLASSES + (
    "drugs", "fortunes", "humorists", "kids", "linux", "medicine", "people", "pets",
    "platitudes", "startrek", "wisdom", "work",
)  # fmt: skip

# language -> (package, files or folders relative to the fortunes folder)
LANGUAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": ("fortunes", ENGLISH_FILES),
    "de": ("fortunes-de", ("de",)),
    "es": ("fortunes-es", ("es",)),
    "it": ("fortunes-it", ("it",)),
    "pt": ("fortunes-br", ("brasil",)),
    "pl": ("fortunes-pl", ("pl",)),
    "ru": ("fortunes-ru", ("ru",)),
    "cs": ("fortunes-cs", ("cs",)),
    "bg": ("fortunes-bg", ("bg",)),
    "eo": ("fortunes-eo", ("eo",)),
    "ga": ("fortunes-ga", ("ga",)),
    "zh": ("fortunes-zh", ("chinese", "tang300", "song100")),
}
_SKIP_PARTS = {"off", "asciiart", "ascii-art", "banner"}  # offensive sections, pictures


def parse_fortunes(text: str, min_chars: int = MIN_CHARS) -> list[str]:
    """The fortunes of a strfile source: entries separated by lines holding only `%`."""
    entries, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            entries.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current).strip())
    return [e for e in entries if len(e) >= min_chars]


def _fortune_files(root: Path, rel: str) -> list[Path]:
    path = root / rel
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        parts = set(p.relative_to(root).parts)
        if p.is_file() and p.suffix not in (".dat", ".u8") and not parts & _SKIP_PARTS:
            files.append(p)
    return files


def fortunes_root(packages: list[str]) -> Path:
    """A folder holding the fortunes of `packages`: the system's, else unpacked in the cache."""
    missing = [p for p in packages if not (SYSTEM_FORTUNES / FORTUNE_PACKAGES[p]).exists()]
    if not missing:
        return SYSTEM_FORTUNES
    cached = cache_root() / "evals" / "debian"
    cached_root = cached / "usr/share/games/fortunes"
    still = [p for p in missing if not (cached_root / FORTUNE_PACKAGES[p]).exists()]
    if still:
        fetch_debian_packages(still, cached)
    for p in missing:  # a mix of system and cache: link the system's files in
        if not (cached_root / FORTUNE_PACKAGES[p]).exists():
            raise ValueError(f"Debian package {p} holds no {FORTUNE_PACKAGES[p]}")
    for p in set(packages) - set(missing):
        target = cached_root / FORTUNE_PACKAGES[p]
        if not target.exists():
            target.symlink_to(SYSTEM_FORTUNES / FORTUNE_PACKAGES[p])
    return cached_root


def fetch_debian_packages(packages: list[str], dest: Path) -> None:
    """Download `packages` with `apt-get download` and unpack them into `dest` (no root)."""
    hint = f"install them with: apt-get install -y {' '.join(packages)}"
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise ValueError(f"labelled data needs the Debian packages {packages}: {hint}")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            ["apt-get", "download", *packages], cwd=tmp, capture_output=True, text=True
        )
        debs = sorted(Path(tmp).glob("*.deb"))
        if done.returncode != 0 or len(debs) < len(packages):
            raise ValueError(
                f"could not download the Debian packages {packages} "
                f"({done.stderr.strip()[-300:]}): {hint}"
            )
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)


def fortunes_topic_rows() -> Iterator[tuple[str, str]]:
    """English fortunes labelled by category."""
    root = fortunes_root(["fortunes", "fortunes-min"])
    for topic in TOPIC_CLASSES:
        for path in _fortune_files(root, topic):
            for entry in parse_fortunes(path.read_text(encoding="utf-8", errors="replace")):
                yield entry, topic


def fortunes_language_rows() -> Iterator[tuple[str, str]]:
    """Fortunes labelled by language (ISO 639-1 codes)."""
    root = fortunes_root(sorted({pkg for pkg, _ in LANGUAGES.values()} | {"fortunes-min"}))
    for language, (_, rels) in LANGUAGES.items():
        for rel in rels:
            for path in _fortune_files(root, rel):
                text = path.read_text(encoding="utf-8", errors="replace")
                for entry in parse_fortunes(text):
                    yield entry, language


# --- source code -------------------------------------------------------------------------

SKIP_CHARS = 150  # like SAEBench's github-code task: skip the licence header
MIN_CODE_CHARS = 384  # and keep files with at least 128 tokens' worth (x3 chars) after it
MAX_CODE_CHARS = 2000  # more than 128 tokens of any language; keeps the prepared file small
_SHEBANGS = (b"#!/bin/sh", b"#! /bin/sh", b"#!/bin/bash", b"#! /bin/bash", b"#!/usr/bin/env bash",
             b"#!/usr/bin/env sh", b"#!/bin/dash")  # fmt: skip


def _glob(patterns: list[str]) -> list[str]:
    found: set[str] = set()
    for pattern in patterns:
        found.update(glob.glob(pattern, recursive=True))
    return sorted(p for p in found if os.path.isfile(p) and not os.path.islink(p))


def _is_shell(path: str) -> bool:
    if path.endswith(".sh") or "/bash-completion/completions/" in path:
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(32).startswith(_SHEBANGS)
    except OSError:
        return False


def code_files() -> dict[str, list[str]]:
    """Source files on this machine per language."""
    stdlib = sysconfig.get_paths()["stdlib"]
    shell_dirs = ["/usr/bin", "/usr/sbin", "/etc/init.d", "/usr/lib/git-core", "/usr/share/debconf"]
    shell = [p for p in _glob([f"{d}/*" for d in shell_dirs]) if _is_shell(p)]
    shell += _glob(["/usr/share/bash-completion/completions/*", "/usr/lib/node_modules/**/*.sh"])
    return {
        "python": _glob([f"{stdlib}/*.py", f"{stdlib}/*/*.py"]),
        "perl": _glob(["/usr/share/perl/*/**/*.pm", "/usr/share/perl5/**/*.pm"]),
        "shell": sorted(set(shell)),
        "c": [p for p in _glob(["/usr/include/*.h", "/usr/include/*/*.h"]) if "c++" not in p],
        "javascript": _glob(
            [
                "/usr/lib/node_modules/**/*.js",
                "/usr/share/javascript/**/*.js",
                "/usr/share/nodejs/**/*.js",
            ]  # fmt: skip
        ),
    }


def code_snippet(text: str) -> str | None:
    """The file's text after its header, or None if too short (SAEBench's github-code rule)."""
    if len(text) <= MIN_CODE_CHARS + SKIP_CHARS:
        return None
    return text[SKIP_CHARS : SKIP_CHARS + MAX_CODE_CHARS]


def code_language_rows() -> Iterator[tuple[str, str]]:
    """One snippet per source file, labelled by programming language."""
    for language, files in code_files().items():
        for path in files:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            snippet = code_snippet(text)
            if snippet is not None and "\x00" not in snippet:
                yield snippet, language


# --- standard-library docstrings ---------------------------------------------------------

DOC_PACKAGES = ("asyncio", "email", "importlib", "logging", "tkinter")
"""Packages with at least 140 docstrings of 80+ characters (`xml` has 130 on Python 3.11)."""
MIN_DOC_CHARS = 80


def python_docs_rows() -> Iterator[tuple[str, str]]:
    """Docstrings of the standard library's packages, labelled by top-level package."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in DOC_PACKAGES:
        for path in sorted((stdlib / package).rglob("*.py")):
            if "test" in path.relative_to(stdlib).parts[1:-1]:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, UnicodeDecodeError):
                continue
            for node in ast.walk(tree):
                kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
                if isinstance(node, kinds):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= MIN_DOC_CHARS:
                        yield doc, package


BUILTIN_SOURCES: dict[str, Callable[[], Iterator[tuple[str, str]]]] = {
    "fortunes-topic": fortunes_topic_rows,
    "fortunes-language": fortunes_language_rows,
    "code-language": code_language_rows,
    "python-docs-topic": python_docs_rows,
}


# --- SAEBench's hub datasets -------------------------------------------------------------

# id -> (hub path, config, text column, label column, classes kept: SAEBench's choice)
HUB_DATASETS: dict[str, tuple[str, str | None, str, str, tuple[str, ...]]] = {
    "fancyzhx/ag_news": ("fancyzhx/ag_news", None, "text", "label", ("0", "1", "2", "3")),
    "LabHC/bias_in_bios_class_set1": ("LabHC/bias_in_bios", None, "hard_text", "profession",
                                      ("0", "1", "2", "6", "9")),
    "LabHC/bias_in_bios_class_set2": ("LabHC/bias_in_bios", None, "hard_text", "profession",
                                      ("11", "13", "14", "18", "19")),
    "LabHC/bias_in_bios_class_set3": ("LabHC/bias_in_bios", None, "hard_text", "profession",
                                      ("20", "21", "22", "25", "26")),
    "canrager/amazon_reviews_mcauley_1and5": ("canrager/amazon_reviews_mcauley_1and5", None,
                                              "text", "category", ("1", "2", "3", "5", "6")),
    "canrager/amazon_reviews_mcauley_1and5_sentiment": (
        "canrager/amazon_reviews_mcauley_1and5", None, "text", "rating", ("1.0", "5.0")),
    "codeparrot/github-code": ("codeparrot/github-code", None, "code", "language",
                               ("C", "Python", "HTML", "Java", "PHP")),
    "Helsinki-NLP/europarl": ("Helsinki-NLP/europarl", None, "translation", "",
                              ("en", "fr", "de", "es", "nl")),
}  # fmt: skip
_EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}


def hub_rows(spec: str, max_rows_per_class: int = 5000) -> Iterator[tuple[str, str]]:
    """`(text, label)` rows of a SAEBench dataset read from the hub (streamed train split)."""
    import datasets

    path, config, text_col, label_col, classes = HUB_DATASETS[spec]
    if spec == "Helsinki-NLP/europarl":
        for language in classes:
            ds = datasets.load_dataset(path, _EUROPARL_PAIRS[language], split="train",
                                       streaming=True)  # fmt: skip
            for i, row in enumerate(ds):
                if i >= max_rows_per_class:
                    break
                yield row["translation"][language], language
        return
    counts = dict.fromkeys(classes, 0)
    ds = datasets.load_dataset(path, config, split="train", streaming=True)
    for row in ds:
        label = str(row[label_col])
        if label not in counts or counts[label] >= max_rows_per_class:
            continue
        text = row[text_col]
        if spec == "codeparrot/github-code":
            text = code_snippet(text)
            if text is None:
                continue
        counts[label] += 1
        yield text, label
        if all(n >= max_rows_per_class for n in counts.values()):
            return

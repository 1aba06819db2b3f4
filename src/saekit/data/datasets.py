"""Dataset specs -> a deterministic stream of documents (text, or token ids if pre-tokenized).

Specs:
- ``builtin:python-docs``: the ``pydoc_data`` topics, then the standard library's long
  docstrings (read with ``ast``, never imported). Nothing to download.
- a local ``.txt`` file: one document per blank-line-separated paragraph.
- a local ``.jsonl`` / ``.json`` / ``.parquet`` file: one document per row.
- a local folder: a saved HF dataset (``save_to_disk``) or, otherwise, every supported file
  under it in sorted path order.
- anything else: an HF hub id (or ``hf:PATH`` to force it), read with
  ``datasets.load_dataset(..., streaming=True)``.

Rows with an ``input_ids`` column are yielded as ``list[int]`` (already tokenized); other rows
yield their ``text_column`` string. Empty documents are skipped.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from saekit.fileio import atomic_write_text
from saekit.paths import cache_root

Document = str | list[int]

BUILTIN_PYTHON_DOCS = "builtin:python-docs"
FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
MIN_DOCSTRING_CHARS = 200
# Every 20th document is held back for evaluation by default (training, caching and evals
# share this value so evaluation never sees trained-on text).
HOLDOUT_EVERY = 20


class DatasetError(ValueError):
    """A dataset spec that is empty, unreadable or malformed (the message names it)."""


def iter_documents(
    spec: str,
    *,
    text_column: str = "text",
    split: str = "train",
    holdout_every: int = 0,
    holdout: bool = False,
) -> Iterator[Document]:
    """Yield the documents of ``spec`` in a fixed order.

    ``split`` picks the split of a hub dataset or saved ``DatasetDict``. With
    ``holdout_every=N`` every N-th document (the N-th, 2N-th, ...) is held back for evaluation:
    ``holdout=False`` yields the others (training), ``holdout=True`` yields only those.
    Raises ``ValueError`` naming the spec if it yields no document or cannot be read.
    """
    if holdout_every < 0 or (holdout and holdout_every < 2):
        raise ValueError(f"holdout_every must be >= 2 to hold documents back, got {holdout_every}")
    docs = _nonempty(_open(spec, text_column=text_column, split=split), spec)
    if holdout_every == 0:
        return docs
    return (
        doc
        for index, doc in enumerate(docs)
        if (index % holdout_every == holdout_every - 1) == holdout
    )




def _nonempty(docs: Iterable[Document], spec: str) -> Iterator[Document]:
    """Drop empty documents; raise a clear error if nothing is left or reading fails."""
    count = 0
    try:
        for doc in docs:
            if len(doc) == 0 or (isinstance(doc, str) and not doc.strip()):
                continue
            count += 1
            yield doc
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(f"dataset {spec!r} could not be read: {err}") from err
    if count == 0:
        raise DatasetError(f"dataset {spec!r} holds no non-empty document")


def _open(spec: str, *, text_column: str, split: str) -> Iterator[Document]:
    if spec == BUILTIN_PYTHON_DOCS:
        if text_column != "text":
            raise DatasetError(
                f"{BUILTIN_PYTHON_DOCS} is plain text with no columns; drop --text-column "
                f"{text_column!r}"
            )
        return python_docs()
    if spec.startswith("builtin:"):
        raise DatasetError(f"unknown builtin dataset {spec!r}; available: {BUILTIN_PYTHON_DOCS}")
    if spec.startswith("hf:"):
        return _hub(spec[3:], text_column=text_column, split=split)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return _saved(path, text_column=text_column, split=split)
        files = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in FILE_BUILDERS]
        if not files:
            raise DatasetError(
                f"dataset folder {spec!r} holds no {', '.join(FILE_BUILDERS)} file "
                "and is not a saved HF dataset"
            )
        return (doc for f in files for doc in _file(f, text_column))
    if path.is_file():
        return _file(path, text_column)
    if path.suffix.lower() in FILE_BUILDERS or spec.startswith((".", "/", "~")):
        raise DatasetError(f"dataset file {spec!r} does not exist")
    return _hub(spec, text_column=text_column, split=split)


def _file(path: Path, text_column: str) -> Iterator[Document]:
    """The rows of a local file, read with the standard library / pyarrow, never the network.

    A file under `_CACHE_BYTES` is read once per process (keyed by its size and mtime), so a
    run that repeats a small dataset epoch after epoch does not re-read or re-parse it.
    """
    if path.suffix.lower() not in FILE_BUILDERS:
        raise DatasetError(
            f"unsupported dataset file {str(path)!r}; use one of {list(FILE_BUILDERS)}"
        )
    stat = path.stat()
    if stat.st_size <= _CACHE_BYTES:
        rows: Iterable[Any] = _cached_rows(str(path), stat.st_size, stat.st_mtime_ns)
    else:
        rows = _read_rows(path)
    return _rows(rows, text_column, str(path))


_CACHE_BYTES = 256 * 2**20


@functools.lru_cache(maxsize=8)
def _cached_rows(path: str, size: int, mtime_ns: int) -> tuple[Any, ...]:
    return tuple(_read_rows(Path(path)))


def _read_rows(path: Path) -> Iterator[Any]:
    """Rows of a .txt (blank-line paragraphs, as strings), .jsonl/.json or .parquet file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            yield from path.read_text(encoding="utf-8").split("\n\n")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(str(path)).iter_batches():
                yield from batch.to_pylist()
        else:
            text = path.read_text(encoding="utf-8")
            try:
                data = json.loads(text)
            except json.JSONDecodeError:  # JSON lines
                data = [json.loads(line) for line in text.splitlines() if line.strip()]
            yield from data if isinstance(data, list) else [data]
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as err:
        raise DatasetError(f"dataset file {str(path)!r} could not be read: {err}") from err


def _saved(path: Path, *, text_column: str, split: str) -> Iterator[Document]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DatasetError(
                f"saved dataset {str(path)!r} has no split {split!r}; has {list(ds)}"
            )
        ds = ds[split]
    return _rows(ds, text_column, str(path))


def _hub(name: str, *, text_column: str, split: str) -> Iterator[Document]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:
        raise DatasetError(f"dataset {name!r} could not be loaded: {err}") from err
    return _rows(ds, text_column, name)


def _rows(ds: Iterable[Any], text_column: str, where: str) -> Iterator[Document]:
    """Rows (dicts, or strings of a text file) -> token-id lists (``input_ids``) or strings."""
    for row in ds:
        if isinstance(row, str):
            yield row
        elif not isinstance(row, dict):
            raise DatasetError(f"dataset {where!r}: a row is a {type(row).__name__}, not an object")
        elif "input_ids" in row:
            yield [int(t) for t in row["input_ids"]]
        elif text_column in row:
            yield row[text_column] or ""
        else:
            raise DatasetError(
                f"dataset {where!r} has no {text_column!r} or 'input_ids' column; "
                f"columns: {sorted(row)} (pass text_column=...)"
            )


def python_docs() -> Iterator[str]:
    """``pydoc_data`` topics (sorted by name), then stdlib docstrings over 200 characters.

    The standard library folder is walked in sorted order, skipping tests, ``idlelib`` and
    installed packages; files are parsed with ``ast``. The order is fixed for a given Python.
    The walk takes about ten seconds, so its result is kept in memory and on disk
    (``$SAEKIT_CACHE/datasets/``, keyed by the Python version and stdlib path).
    """
    yield from _python_docs_cached()


@functools.cache
def _python_docs_cached() -> tuple[str, ...]:
    stdlib = sysconfig.get_paths()["stdlib"]
    key = hashlib.sha256(f"{sys.version}|{stdlib}|{MIN_DOCSTRING_CHARS}|1".encode()).hexdigest()
    path = cache_root() / "datasets" / f"python-docs-{key[:16]}.json"
    try:
        return tuple(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    docs = tuple(_walk_python_docs(stdlib))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(docs))
    except OSError:  # a read-only cache only costs time
        pass
    return docs


def _walk_python_docs(stdlib: str) -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _STDLIB_SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py"):
                yield from _docstrings(os.path.join(root, name))


def _docstrings(path: str) -> Iterator[str]:
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) > MIN_DOCSTRING_CHARS:
                yield doc
